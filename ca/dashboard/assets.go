package dashboard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// assetFS holds the page: plain HTML, CSS and JavaScript written for the
// browser as they are (no build step), and uPlot in assets/vendor, copied
// from npm by scripts/dashboard/build-assets.sh (ca/dashboard/web pins its
// version). Everything is committed, so the Go build needs no npm and the
// page needs no network.
//
//go:embed assets
var assetFS embed.FS

// contentTypes are the assets' types, fixed here rather than read from the
// host's MIME tables: with nosniff, a script served as anything else would
// not run.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
}

// asset is one embedded file, gzipped once.
type asset struct {
	contentType string
	raw, gz     []byte
	etag        string
}

func loadAssets() (map[string]*asset, error) {
	out := map[string]*asset{}
	err := fs.WalkDir(assetFS, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := assetFS.ReadFile(p)
		if err != nil {
			return err
		}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		_, _ = zw.Write(raw)
		if err := zw.Close(); err != nil {
			return err
		}
		sum := sha256.Sum256(raw)
		ct := contentTypes[path.Ext(p)]
		if ct == "" {
			ct = "text/plain; charset=utf-8"
		}
		out[strings.TrimPrefix(p, "assets/")] = &asset{contentType: ct, raw: raw, gz: gz.Bytes(),
			etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dashboard: assets: %w", err)
	}
	for _, need := range []string{"index.html", "login.html", "signed-out.html"} {
		if out[need] == nil {
			return nil, fmt.Errorf("dashboard: assets: %s is missing", need)
		}
	}
	return out, nil
}

// serveAsset serves an embedded file by name, revalidated by its ETag. The
// pages (*.html) are served only at their own paths, not under assets/.
func (h *Handler) serveAsset(w http.ResponseWriter, r *http.Request, name string) {
	a := h.assets[name]
	if a == nil || (strings.HasSuffix(name, ".html") && r.PathValue("name") != "") {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("ETag", a.etag)
	hd.Set("Vary", "Accept-Encoding")
	if hd.Get("Cache-Control") == "" {
		hd.Set("Cache-Control", "no-cache") // the next binary may change them
	}
	if r.Header.Get("If-None-Match") == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.raw
	if acceptsGzip(r) {
		hd.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}
