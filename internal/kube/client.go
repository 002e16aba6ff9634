package kube

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// RESTClient returns a client of the apiserver of cfg rooted at core/v1
// (paths under /api/v1; other groups through AbsPath), whose scheme knows
// core/v1 and what addToScheme adds (authv1.AddToScheme, for example), and
// nothing else. client-go's typed clientset is not used on purpose: linking
// its scheme costs every process ~20 MB at start.
//
// userAgent is sent when cfg sets no UserAgent. cfg is not changed; its
// rate limit, authentication and TLS settings apply as they are (client-go's
// default of 5 requests/s with bursts of 10 when QPS and Burst are 0). The
// client is safe for concurrent use.
func RESTClient(cfg *rest.Config, userAgent string, addToScheme ...func(*runtime.Scheme) error) (*rest.RESTClient, error) {
	scheme := runtime.NewScheme()
	for _, add := range append([]func(*runtime.Scheme) error{corev1.AddToScheme}, addToScheme...) {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("kube: scheme: %w", err)
		}
	}
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = userAgent
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kube: rest client: %w", err)
	}
	return rc, nil
}
