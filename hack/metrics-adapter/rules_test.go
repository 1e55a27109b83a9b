package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The rule users are told to install in prometheus-adapter (operator/README, examples).
const userRule = `rules:
  - seriesQuery: 'ml_inference_requests_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^ml_inference_requests_total$", as: "ml_inference_requests_per_second"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)'
`

func TestUserRuleRendersTheDocumentedQuery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(userRule), 0o644); err != nil {
		t.Fatal(err)
	}
	ms, err := LoadRules(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("got %d metrics, want 1", len(ms))
	}
	m := ms[0]
	if m.Name != "ml_inference_requests_per_second" || m.Series != "ml_inference_requests_total" ||
		m.NamespaceLabel != "namespace" || m.PodLabel != "pod" {
		t.Fatalf("loaded %+v", m)
	}
	q, err := m.Render(QueryArgs{
		Series:        m.Series,
		LabelMatchers: labelMatchers([]matcher{{"namespace", "=", "ml"}, {"pod", "=~", "a|b"}}),
		GroupBy:       m.PodLabel,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `sum(rate(ml_inference_requests_total{namespace="ml",pod=~"a|b"}[1m])) by (pod)`
	if q != want {
		t.Fatalf("rendered\n %s\nwant\n %s", q, want)
	}
}

func TestNameDefaultsAndCaptureGroups(t *testing.T) {
	for _, tc := range []struct{ matches, as, want string }{
		{"^(.*)_total$", "${1}_per_second", "ml_inference_requests_per_second"},
		{"^(.*)_total$", "", "ml_inference_requests"}, // one group: $1
		{"", "", "ml_inference_requests_total"},       // no matches: the series name
	} {
		got, err := metricName(NameRule{Matches: tc.matches, As: tc.as}, "ml_inference_requests_total")
		if err != nil || got != tc.want {
			t.Errorf("matches %q as %q: got %q, %v; want %q", tc.matches, tc.as, got, err, tc.want)
		}
	}
}

func TestLabelValuesAreQuoted(t *testing.T) {
	got := labelMatchers([]matcher{{"namespace", "=", `a"b\c`}})
	if want := `namespace="a\"b\\c"`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// Everything outside the supported subset is refused at load, naming what is wrong.
func TestUnsupportedRulesAreRefused(t *testing.T) {
	replace := func(old, new string) string { return strings.Replace(userRule, old, new, 1) }
	for name, tc := range map[string]struct{ doc, wantErr string }{
		"unknown field": {
			replace("    name:", "    seriesFilters: [{is: x}]\n    name:"), "seriesFilters"},
		"series discovery": {
			replace(`'ml_inference_requests_total{namespace!="",pod!=""}'`, `'{__name__=~"ml_.*"}'`), "series discovery"},
		"name does not match": {
			replace(`"^ml_inference_requests_total$"`, `"^other$"`), "does not match"},
		"bad regexp": {
			replace(`"^ml_inference_requests_total$"`, `"("`), "name.matches"},
		"other resource": {
			replace("pod: {resource: pod}", "pod: {resource: deployment}"), "deployment"},
		"no pod label": {
			replace(", pod: {resource: pod}", ""), "needs a label"},
		"unknown template field": {
			replace("<<.GroupBy>>", "<<.GroupBySlice>>"), "GroupBySlice"},
		"bad template": {
			replace("<<.GroupBy>>", "<<.GroupBy"), "metricsQuery"},
		"no rules":  {"rules: []\n", "none defined"},
		"duplicate": {userRule + strings.TrimPrefix(userRule, "rules:\n"), "defined twice"},
	} {
		_, err := ParseRules([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got error %v, want one containing %q", name, err, tc.wantErr)
		}
	}
}
