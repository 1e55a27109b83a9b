package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	apierr "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"

	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
)

// PodNames lists the names of the pods in a namespace that match a label selector. The HPA
// sends the scale target's pod selector, and Prometheus knows pods only by name, so the
// selector is resolved against the Kubernetes API first.
type PodNames func(namespace string, selector labels.Selector) ([]string, error)

// Provider answers custom.metrics.k8s.io requests for pods from Prometheus, one PromQL query
// per request: values are as fresh as Prometheus's last scrape, with no cache to go stale.
type Provider struct {
	metrics map[string]*Metric
	prom    *Prometheus
	pods    PodNames
}

var _ provider.CustomMetricsProvider = (*Provider)(nil)

var podsResource = schema.GroupResource{Resource: "pods"}

// NewProvider serves the given metrics, querying prom and resolving selectors with pods.
func NewProvider(metrics []*Metric, prom *Prometheus, pods PodNames) *Provider {
	p := &Provider{metrics: map[string]*Metric{}, prom: prom, pods: pods}
	for _, m := range metrics {
		p.metrics[m.Name] = m
	}
	return p
}

// ListAllMetrics is what discovery shows: each rule's metric, on namespaced pods.
func (p *Provider) ListAllMetrics() []provider.CustomMetricInfo {
	out := make([]provider.CustomMetricInfo, 0, len(p.metrics))
	for name := range p.metrics {
		out = append(out, provider.CustomMetricInfo{GroupResource: podsResource, Namespaced: true, Metric: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metric < out[j].Metric })
	return out
}

// GetMetricBySelector is the HPA's call for a Pods metric: one value per selected pod.
func (p *Provider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	m, err := p.lookup(info)
	if err != nil {
		return nil, err
	}
	names, err := p.pods(namespace, selector)
	if err != nil {
		return nil, apierr.NewInternalError(fmt.Errorf("listing pods in %s: %w", namespace, err))
	}
	list := &custom_metrics.MetricValueList{}
	if len(names) == 0 {
		// An empty pod=~"" would match series without a pod label: nothing to ask.
		return list, nil
	}
	sort.Strings(names)
	values, err := p.query(ctx, m, namespace, names, metricSelector)
	if err != nil {
		return nil, err
	}
	// A pod Prometheus has no value for (not scraped yet, or too new for rate's window) is
	// left out, as prometheus-adapter does: the HPA then treats it as a missing metric
	// (assumed idle on scale-up, at target on scale-down) instead of reading a made-up zero.
	for _, name := range names {
		if v, ok := values[name]; ok {
			list.Items = append(list.Items, p.value(m, namespace, name, v))
		}
	}
	return list, nil
}

// GetMetricByName answers for one pod (kubectl get --raw .../pods/NAME/METRIC).
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	m, err := p.lookup(info)
	if err != nil {
		return nil, err
	}
	values, err := p.query(ctx, m, name.Namespace, []string{name.Name}, metricSelector)
	if err != nil {
		return nil, err
	}
	v, ok := values[name.Name]
	if !ok {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	mv := p.value(m, name.Namespace, name.Name, v)
	return &mv, nil
}

// lookup finds the rule for a request. Rules only map namespaces and pods, so any other
// resource, or a root-scoped request, is a metric this adapter does not have.
func (p *Provider) lookup(info provider.CustomMetricInfo) (*Metric, error) {
	gr := info.GroupResource
	m, ok := p.metrics[info.Metric]
	if !ok || !info.Namespaced || gr.Group != "" || (gr.Resource != "pods" && gr.Resource != "pod") {
		return nil, provider.NewMetricNotFoundError(gr, info.Metric)
	}
	return m, nil
}

// query renders the rule for these pods and returns each pod's sample.
func (p *Provider) query(ctx context.Context, m *Metric, namespace string, pods []string, metricSelector labels.Selector) (map[string]Sample, error) {
	quoted := make([]string, len(pods))
	for i, n := range pods {
		quoted[i] = regexp.QuoteMeta(n) // Prometheus anchors the regexp: exact names only
	}
	ms := []matcher{
		{m.NamespaceLabel, "=", namespace},
		{m.PodLabel, "=~", strings.Join(quoted, "|")},
	}
	extra, err := selectorMatchers(metricSelector)
	if err != nil {
		return nil, err
	}
	q, err := m.Render(QueryArgs{Series: m.Series, LabelMatchers: labelMatchers(append(ms, extra...)), GroupBy: m.PodLabel})
	if err != nil {
		return nil, apierr.NewInternalError(err)
	}
	samples, err := p.prom.Query(ctx, q)
	if err != nil {
		return nil, apierr.NewInternalError(fmt.Errorf("metric %s: Prometheus query %s: %w", m.Name, q, err))
	}
	klog.V(4).Infof("query %s: %d samples", q, len(samples))
	out := make(map[string]Sample, len(samples))
	for _, s := range samples {
		pod := s.Labels[m.PodLabel]
		if pod == "" {
			return nil, apierr.NewInternalError(fmt.Errorf("metric %s: query %s returned a series without label %q: metricsQuery must aggregate by <<.GroupBy>>", m.Name, q, m.PodLabel))
		}
		if _, dup := out[pod]; dup {
			return nil, apierr.NewInternalError(fmt.Errorf("metric %s: query %s returned several series for pod %s: metricsQuery must aggregate by <<.GroupBy>>", m.Name, q, pod))
		}
		// NaN (e.g. 0/0) or ±Inf, or a value too large for a milli-quantity, is no usable
		// reading: report the pod as missing rather than as a number the HPA would act on.
		if math.IsNaN(s.Value) || math.Abs(s.Value) > math.MaxInt64/1000 {
			klog.V(2).Infof("metric %s: pod %s/%s: value %v is not usable, left out", m.Name, namespace, pod, s.Value)
			continue
		}
		out[pod] = s
	}
	return out, nil
}

func (p *Provider) value(m *Metric, namespace, pod string, s Sample) custom_metrics.MetricValue {
	v := custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: namespace, Name: pod},
		Metric:          custom_metrics.MetricIdentifier{Name: m.Name},
		Timestamp:       metav1.NewTime(s.Time),
		// Milli-units: a rate such as 0.25 requests/s is 250m, not rounded to 0.
		Value: *resource.NewMilliQuantity(int64(math.Round(s.Value*1000)), resource.DecimalSI),
	}
	// Metric.Selector (an echo of the metric selector) stays empty: the HPA does not read it,
	// and metav1.LabelSelector cannot spell every selector operator (!=) anyway.
	return v
}

// selectorMatchers turns the HPA's metric.selector into PromQL matchers, as
// prometheus-adapter adds it to <<.LabelMatchers>>.
func selectorMatchers(sel labels.Selector) ([]matcher, error) {
	reqs, selectable := sel.Requirements()
	if !selectable {
		return nil, apierr.NewBadRequest(fmt.Sprintf("metric selector %q selects nothing", sel))
	}
	var out []matcher
	for _, r := range reqs {
		raw := r.Values().List() // sorted
		alts := make([]string, len(raw))
		for i, v := range raw {
			alts[i] = regexp.QuoteMeta(v)
		}
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals:
			out = append(out, matcher{r.Key(), "=", raw[0]})
		case selection.NotEquals:
			out = append(out, matcher{r.Key(), "!=", raw[0]})
		case selection.In:
			out = append(out, matcher{r.Key(), "=~", strings.Join(alts, "|")})
		case selection.NotIn:
			out = append(out, matcher{r.Key(), "!~", strings.Join(alts, "|")})
		case selection.Exists:
			out = append(out, matcher{r.Key(), "=~", ".+"})
		case selection.DoesNotExist:
			out = append(out, matcher{r.Key(), "=", ""})
		default:
			return nil, apierr.NewBadRequest(fmt.Sprintf("metric selector operator %q is not supported", r.Operator()))
		}
	}
	return out, nil
}

// Prometheus is a minimal client for the instant-query endpoint, all this adapter needs
// (client_golang's API client would add a dependency for one call).
type Prometheus struct {
	URL    *url.URL
	Client *http.Client
}

// Sample is one element of an instant vector.
type Sample struct {
	Labels map[string]string
	Value  float64
	Time   time.Time
}

// Query runs an instant query (/api/v1/query) at the server's current time.
func (p *Prometheus) Query(ctx context.Context, query string) ([]Sample, error) {
	form := url.Values{"query": {query}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL.JoinPath("api/v1/query").String(), strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("HTTP %d: reading body: %w", resp.StatusCode, err)
	}
	var r struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"` // its shape depends on ResultType
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		// Not Prometheus's JSON: a proxy error page, the wrong URL...
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, snippet(body))
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("HTTP %d: %s: %s", resp.StatusCode, r.ErrorType, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %q, want vector", r.Data.ResultType)
	}
	var vector []struct {
		Metric map[string]string  `json:"metric"`
		Value  [2]json.RawMessage `json:"value"` // [unix seconds, "value"]
	}
	if err := json.Unmarshal(r.Data.Result, &vector); err != nil {
		return nil, fmt.Errorf("vector: %w", err)
	}
	out := make([]Sample, 0, len(vector))
	for _, e := range vector {
		var ts float64
		var val string
		if err := json.Unmarshal(e.Value[0], &ts); err != nil {
			return nil, fmt.Errorf("sample timestamp %s: %w", e.Value[0], err)
		}
		if err := json.Unmarshal(e.Value[1], &val); err != nil {
			return nil, fmt.Errorf("sample value %s: %w", e.Value[1], err)
		}
		v, err := strconv.ParseFloat(val, 64) // also takes Prometheus's "NaN", "+Inf"
		if err != nil {
			return nil, fmt.Errorf("sample value %q: %w", val, err)
		}
		sec, frac := math.Modf(ts)
		out = append(out, Sample{Labels: e.Metric, Value: v, Time: time.Unix(int64(sec), int64(math.Round(frac*1e9)))})
	}
	return out, nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}
