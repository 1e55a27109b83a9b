// Command metrics-adapter serves custom.metrics.k8s.io (v1beta2 and v1beta1) from Prometheus,
// driven by a prometheus-adapter rules file. It exists because prometheus-adapter itself cannot
// be fetched here: it runs the same rule our users install in prometheus-adapter, with the same
// library underneath (sigs.k8s.io/custom-metrics-apiserver), so the real node can show that the
// operator's HPA reads ml_inference_requests_per_second and scales on it.
//
//	metrics-adapter --config=rules.yaml --prometheus-url=http://prometheus.monitoring.svc:9090 \
//	  --secure-port=6443 --cert-dir=/certs --v=2
package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver/metrics"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
)

type adapter struct {
	basecmd.AdapterBase

	configFile    string
	prometheusURL string
	queryTimeout  time.Duration
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	a := &adapter{}
	a.Name = "metrics-adapter"
	fs := a.Flags() // the library's serving, authn/authz and kubeconfig flags
	fs.StringVar(&a.configFile, "config", "", "prometheus-adapter rules file (required)")
	fs.StringVar(&a.prometheusURL, "prometheus-url", "", "Prometheus base URL, e.g. http://prometheus.monitoring.svc:9090 (required)")
	fs.DurationVar(&a.queryTimeout, "prometheus-timeout", 10*time.Second, "timeout of one Prometheus query")
	logs.AddFlags(fs) // --v, --vmodule
	if err := fs.Parse(os.Args[1:]); err != nil {
		klog.Fatalf("flags: %v", err)
	}

	p, err := a.provider()
	if err != nil {
		klog.Fatalf("%v", err)
	}
	a.WithCustomMetrics(p)
	// No external metrics: WithExternalMetrics is left unset, so that API is not installed.

	if err := metrics.RegisterMetrics(legacyregistry.Register); err != nil {
		klog.Fatalf("registering metrics: %v", err)
	}
	if err := a.Run(context.Background()); err != nil {
		klog.Fatalf("running the adapter: %v", err)
	}
}

func (a *adapter) provider() (*Provider, error) {
	if a.configFile == "" || a.prometheusURL == "" {
		return nil, fmt.Errorf("--config and --prometheus-url are required")
	}
	rules, err := LoadRules(a.configFile)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(a.prometheusURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--prometheus-url %q: want http(s)://host[:port][/path]", a.prometheusURL)
	}
	for _, m := range rules {
		klog.Infof("serving %s on pods from series %s (labels %s, %s)", m.Name, m.Series, m.NamespaceLabel, m.PodLabel)
	}

	// A shared pod informer rather than a List per request: the HPA asks every 15 s per HPA,
	// and the library's informer factory is started with the server, so this costs one watch.
	inf, err := a.Informers()
	if err != nil {
		return nil, err
	}
	podInformer := inf.Core().V1().Pods()
	lister := podInformer.Lister()
	synced := podInformer.Informer().HasSynced // registered before Run, so the server starts it
	pods := func(namespace string, sel labels.Selector) ([]string, error) {
		if !synced() {
			return nil, fmt.Errorf("pod cache not synced yet")
		}
		ps, err := lister.Pods(namespace).List(sel)
		if err != nil {
			return nil, err
		}
		names := make([]string, len(ps))
		for i, p := range ps {
			names[i] = p.Name
		}
		return names, nil
	}

	prom := &Prometheus{URL: u, Client: &http.Client{Timeout: a.queryTimeout}}
	return NewProvider(rules, prom, pods), nil
}
