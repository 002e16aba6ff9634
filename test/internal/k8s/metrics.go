package k8s

import (
	"bufio"
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// APIRequests is one reading of the apiserver's apiserver_request_total counter, summed over
// response codes, by "VERB resource" or "VERB resource/subresource" as the apiserver labels
// them: "POST tokenreviews", "GET pods", "GET nodes", "POST serviceaccounts/token", ...
type APIRequests map[string]float64

// APIRequests reads apiserver_request_total from the apiserver's /metrics as the admin. It
// counts every request the apiserver served, whoever made it (the reading itself is not
// counted: the apiserver records a request when it ends).
func (c *Cluster) APIRequests(t testing.TB) APIRequests {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	raw, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("k8s: read /metrics: %v", err)
	}
	r, err := parseRequestTotal(raw)
	if err != nil {
		t.Fatalf("k8s: /metrics: %v", err)
	}
	return r
}

// Sub returns r minus before, key by key, keeping only the keys that changed.
func (r APIRequests) Sub(before APIRequests) APIRequests {
	out := APIRequests{}
	for k, v := range r {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

var labelRE = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

func parseRequestTotal(raw []byte) (APIRequests, error) {
	out := APIRequests{}
	s := bufio.NewScanner(bytes.NewReader(raw))
	s.Buffer(make([]byte, 0, 1<<16), 1<<20)
	for s.Scan() {
		line := s.Text()
		rest, ok := strings.CutPrefix(line, "apiserver_request_total{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return nil, err
		}
		l := map[string]string{}
		for _, m := range labelRE.FindAllStringSubmatch(labels, -1) {
			l[m[1]] = m[2]
		}
		key := l["verb"] + " " + l["resource"]
		if l["subresource"] != "" {
			key += "/" + l["subresource"]
		}
		out[key] += v
	}
	return out, s.Err()
}
