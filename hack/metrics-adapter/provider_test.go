package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	apierr "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
)

const rpsMetric = "ml_inference_requests_per_second"

var podsInfo = provider.CustomMetricInfo{GroupResource: schema.GroupResource{Resource: "pods"}, Namespaced: true, Metric: rpsMetric}

// fakePrometheus answers /api/v1/query with answer(query), recording the queries it was sent.
func fakePrometheus(t *testing.T, answer func(q string) (int, string)) (*Prometheus, *[]string) {
	t.Helper()
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query" || r.Method != http.MethodPost {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		q := r.FormValue("query")
		queries = append(queries, q)
		code, body := answer(q)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return &Prometheus{URL: u, Client: srv.Client()}, &queries
}

// testProvider serves the user's rule; namespace ml has pods a, b (app=srv) and c (app=srv),
// and pod other (app=else).
func testProvider(t *testing.T, prom *Prometheus) *Provider {
	t.Helper()
	ms, err := ParseRules([]byte(userRule))
	if err != nil {
		t.Fatal(err)
	}
	pods := map[string]labels.Set{"a": {"app": "srv"}, "b": {"app": "srv"}, "c": {"app": "srv"}, "other": {"app": "else"}}
	return NewProvider(ms, prom, func(ns string, sel labels.Selector) ([]string, error) {
		var out []string
		if ns != "ml" {
			return nil, nil
		}
		for name, l := range pods {
			if sel.Matches(l) {
				out = append(out, name)
			}
		}
		return out, nil
	})
}

// Prometheus knows a and b; c (say, just started: rate() has no two samples yet) is absent.
const vectorAB = `{"status":"success","data":{"resultType":"vector","result":[
 {"metric":{"pod":"b"},"value":[1700000000.5,"0.25"]},
 {"metric":{"pod":"a"},"value":[1700000000.5,"12.3456"]}]}}`

func TestGetMetricBySelector(t *testing.T) {
	prom, queries := fakePrometheus(t, func(string) (int, string) { return 200, vectorAB })
	p := testProvider(t, prom)

	list, err := p.GetMetricBySelector(context.Background(), "ml", labels.SelectorFromSet(labels.Set{"app": "srv"}), podsInfo, labels.Everything())
	if err != nil {
		t.Fatal(err)
	}
	want := `sum(rate(ml_inference_requests_total{namespace="ml",pod=~"a|b|c"}[1m])) by (pod)`
	if len(*queries) != 1 || (*queries)[0] != want {
		t.Fatalf("queries %q, want [%q]", *queries, want)
	}
	// One value per pod Prometheus answered for, in milli-units; c is omitted, not zero, so
	// the HPA counts it as a pod with a missing metric.
	got := map[string]string{}
	for _, it := range list.Items {
		if it.DescribedObject.Kind != "Pod" || it.DescribedObject.APIVersion != "v1" || it.DescribedObject.Namespace != "ml" || it.Metric.Name != rpsMetric {
			t.Errorf("item %+v", it)
		}
		if !it.Timestamp.Time.Equal(time.Unix(1700000000, 5e8)) {
			t.Errorf("%s: timestamp %v", it.DescribedObject.Name, it.Timestamp)
		}
		got[it.DescribedObject.Name] = it.Value.String()
	}
	if len(got) != 2 || got["a"] != "12346m" || got["b"] != "250m" {
		t.Fatalf("values %v, want a=12346m b=250m and no c", got)
	}
	if a := list.Items[0]; a.DescribedObject.Name != "a" || a.Value.MilliValue() != 12346 {
		t.Fatalf("items not in pod order or wrong value: %+v", list.Items)
	}
}

func TestGetMetricByName(t *testing.T) {
	prom, queries := fakePrometheus(t, func(q string) (int, string) {
		if strings.Contains(q, `pod=~"a"`) {
			return 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1700000000,"2"]}]}}`
		}
		return 200, `{"status":"success","data":{"resultType":"vector","result":[]}}`
	})
	p := testProvider(t, prom)

	v, err := p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "ml", Name: "a"}, podsInfo, labels.Everything())
	if err != nil {
		t.Fatal(err)
	}
	if v.DescribedObject.Name != "a" || v.Value.MilliValue() != 2000 {
		t.Fatalf("got %+v", v)
	}
	// A pod Prometheus has nothing for is the library's NotFound for that object.
	_, err = p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "ml", Name: "c"}, podsInfo, labels.Everything())
	if !apierr.IsNotFound(err) {
		t.Fatalf("missing pod: got %v, want NotFound", err)
	}
	if want := `sum(rate(ml_inference_requests_total{namespace="ml",pod=~"c"}[1m])) by (pod)`; (*queries)[1] != want {
		t.Fatalf("query %q, want %q", (*queries)[1], want)
	}
}

func TestPrometheusErrorsAreErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		code    int
		body    string
		wantErr string
	}{
		"API error":  {400, `{"status":"error","errorType":"bad_data","error":"parse error at char 5"}`, "bad_data: parse error at char 5"},
		"not JSON":   {502, "<html>Bad Gateway</html>", "HTTP 502: <html>Bad Gateway</html>"},
		"not vector": {200, `{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}`, "want vector"},
		"ungrouped":  {200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}`, "must aggregate by"},
		"duplicate pod": {200, `{"status":"success","data":{"resultType":"vector","result":[
			{"metric":{"pod":"a","x":"1"},"value":[1,"1"]},{"metric":{"pod":"a","x":"2"},"value":[1,"1"]}]}}`, "several series for pod a"},
	} {
		prom, _ := fakePrometheus(t, func(string) (int, string) { return tc.code, tc.body })
		p := testProvider(t, prom)
		_, err := p.GetMetricBySelector(context.Background(), "ml", labels.Everything(), podsInfo, labels.Everything())
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.wantErr)
			continue
		}
		if status, ok := err.(apierr.APIStatus); !ok || status.Status().Code != 500 {
			t.Errorf("%s: %v is not an internal API error", name, err)
		}
	}

	// Prometheus unreachable.
	u, _ := url.Parse("http://127.0.0.1:1")
	p := testProvider(t, &Prometheus{URL: u, Client: &http.Client{Timeout: time.Second}})
	if _, err := p.GetMetricBySelector(context.Background(), "ml", labels.Everything(), podsInfo, labels.Everything()); err == nil {
		t.Error("unreachable Prometheus: no error")
	}
}

func TestUnusableValuesAreMissing(t *testing.T) {
	prom, _ := fakePrometheus(t, func(string) (int, string) {
		return 200, `{"status":"success","data":{"resultType":"vector","result":[
			{"metric":{"pod":"a"},"value":[1,"NaN"]},{"metric":{"pod":"b"},"value":[1,"+Inf"]},{"metric":{"pod":"c"},"value":[1,"0"]}]}}`
	})
	list, err := testProvider(t, prom).GetMetricBySelector(context.Background(), "ml", labels.SelectorFromSet(labels.Set{"app": "srv"}), podsInfo, labels.Everything())
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].DescribedObject.Name != "c" || !list.Items[0].Value.IsZero() {
		t.Fatalf("got %+v, want only c = 0", list.Items)
	}
}

func TestUnknownMetricsAreNotFound(t *testing.T) {
	prom, queries := fakePrometheus(t, func(string) (int, string) { return 200, vectorAB })
	p := testProvider(t, prom)
	for _, info := range []provider.CustomMetricInfo{
		{GroupResource: schema.GroupResource{Resource: "pods"}, Namespaced: true, Metric: "nope"},
		{GroupResource: schema.GroupResource{Group: "apps", Resource: "deployments"}, Namespaced: true, Metric: rpsMetric},
		{GroupResource: schema.GroupResource{Resource: "pods"}, Namespaced: false, Metric: rpsMetric},
	} {
		_, err := p.GetMetricBySelector(context.Background(), "ml", labels.Everything(), info, labels.Everything())
		if !apierr.IsNotFound(err) {
			t.Errorf("%v: got %v, want NotFound", info, err)
		}
		_, err = p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "ml", Name: "a"}, info, labels.Everything())
		if !apierr.IsNotFound(err) {
			t.Errorf("%v by name: got %v, want NotFound", info, err)
		}
	}
	if len(*queries) != 0 {
		t.Errorf("unknown metrics queried Prometheus: %q", *queries)
	}
}

func TestNoPodsNoQuery(t *testing.T) {
	prom, queries := fakePrometheus(t, func(string) (int, string) { return 200, vectorAB })
	list, err := testProvider(t, prom).GetMetricBySelector(context.Background(), "empty", labels.Everything(), podsInfo, labels.Everything())
	if err != nil || len(list.Items) != 0 || len(*queries) != 0 {
		t.Fatalf("got %+v, %v, queries %q", list, err, *queries)
	}
}

func TestMetricSelectorBecomesMatchers(t *testing.T) {
	prom, queries := fakePrometheus(t, func(string) (int, string) { return 200, vectorAB })
	sel, err := labels.Parse("model in (resnet.v2,vit),code!=500")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testProvider(t, prom).GetMetricBySelector(context.Background(), "ml", labels.SelectorFromSet(labels.Set{"app": "srv"}), podsInfo, sel); err != nil {
		t.Fatal(err)
	}
	want := `sum(rate(ml_inference_requests_total{namespace="ml",pod=~"a|b|c",code!="500",model=~"resnet\\.v2|vit"}[1m])) by (pod)`
	if (*queries)[0] != want {
		t.Fatalf("query\n %s\nwant\n %s", (*queries)[0], want)
	}
}

func TestListAllMetrics(t *testing.T) {
	got := testProvider(t, nil).ListAllMetrics()
	if len(got) != 1 || got[0] != podsInfo {
		t.Fatalf("got %v, want [%v]", got, podsInfo)
	}
}
