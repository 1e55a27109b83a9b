package main

// The rules file is prometheus-adapter's format, so that the rule our users are told to install
// in prometheus-adapter is the very file this adapter runs with. Only the subset that rule uses
// is supported; anything else is refused when the file is loaded rather than silently ignored,
// so a rule that would behave differently under prometheus-adapter never starts here.

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

// Config is the top level of a prometheus-adapter rules file.
type Config struct {
	Rules []Rule `json:"rules"`
}

// Rule is one entry of `rules:`; the field names are prometheus-adapter's.
type Rule struct {
	SeriesQuery  string       `json:"seriesQuery"`
	Resources    ResourceRule `json:"resources"`
	Name         NameRule     `json:"name"`
	MetricsQuery string       `json:"metricsQuery"`
}

// ResourceRule maps Prometheus labels to Kubernetes resources. Only explicit overrides are
// supported (no `template:`), since the rule names its labels outright.
type ResourceRule struct {
	Overrides map[string]GroupResource `json:"overrides"`
}

// GroupResource is the target of an override.
type GroupResource struct {
	Group    string `json:"group,omitempty"`
	Resource string `json:"resource"`
}

// NameRule turns a series name into the metric name the API serves.
type NameRule struct {
	Matches string `json:"matches"`
	As      string `json:"as"`
}

// QueryArgs are the values a metricsQuery template sees, under prometheus-adapter's names.
type QueryArgs struct {
	Series        string
	LabelMatchers string
	GroupBy       string
}

// Metric is a loaded rule: one custom metric on pods, answered by one PromQL template.
type Metric struct {
	// Name is what the HPA asks for (name.as applied to the series name).
	Name string
	// Series is the Prometheus series the rule reads.
	Series string
	// NamespaceLabel and PodLabel are the Prometheus labels that resources.overrides maps to
	// namespaces and pods: they are what queries are filtered and grouped by.
	NamespaceLabel string
	PodLabel       string
	query          *template.Template
}

// Render fills the rule's metricsQuery. prometheus-adapter uses text/template with << >>
// delimiters, so that PromQL's own braces need no escaping.
func (m *Metric) Render(args QueryArgs) (string, error) {
	var b bytes.Buffer
	if err := m.query.Execute(&b, args); err != nil {
		return "", fmt.Errorf("metric %s: metricsQuery: %w", m.Name, err)
	}
	return b.String(), nil
}

// LoadRules reads and compiles a rules file.
func LoadRules(path string) ([]*Metric, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	metrics, err := ParseRules(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return metrics, nil
}

// ParseRules compiles the rules of a prometheus-adapter config document.
func ParseRules(data []byte) ([]*Metric, error) {
	var cfg Config
	// Strict: an unsupported prometheus-adapter field (seriesFilters, resources.template,
	// externalRules...) is an error, not a rule that quietly means something else here.
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if len(cfg.Rules) == 0 {
		return nil, fmt.Errorf("rules: none defined")
	}
	seen := map[string]bool{}
	var out []*Metric
	for i, r := range cfg.Rules {
		m, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		if seen[m.Name] {
			return nil, fmt.Errorf("rules[%d]: metric %s defined twice", i, m.Name)
		}
		seen[m.Name] = true
		out = append(out, m)
	}
	return out, nil
}

// A series query that starts with a metric name, e.g. `name{label!=""}`.
var seriesName = regexp.MustCompile(`^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{.*\})?\s*$`)

func compileRule(r Rule) (*Metric, error) {
	// prometheus-adapter discovers series by running seriesQuery against /api/v1/series. This
	// adapter serves exactly the series the query names instead, which needs no discovery loop
	// and is the same thing for a query that starts with a metric name.
	sm := seriesName.FindStringSubmatch(r.SeriesQuery)
	if sm == nil {
		return nil, fmt.Errorf("seriesQuery %q: must be a metric name with optional {matchers} (series discovery is not supported)", r.SeriesQuery)
	}
	m := &Metric{Series: sm[1]}

	for label, gr := range r.Resources.Overrides {
		if gr.Group != "" {
			return nil, fmt.Errorf("resources.overrides.%s: group %q: only core namespace and pod are supported", label, gr.Group)
		}
		switch gr.Resource {
		case "namespace", "namespaces":
			m.NamespaceLabel = label
		case "pod", "pods":
			m.PodLabel = label
		default:
			return nil, fmt.Errorf("resources.overrides.%s: resource %q: only namespace and pod are supported", label, gr.Resource)
		}
	}
	if m.NamespaceLabel == "" || m.PodLabel == "" {
		return nil, fmt.Errorf("resources.overrides: needs a label for namespace and one for pod")
	}

	name, err := metricName(r.Name, m.Series)
	if err != nil {
		return nil, err
	}
	m.Name = name

	if strings.TrimSpace(r.MetricsQuery) == "" {
		return nil, fmt.Errorf("metricsQuery: empty")
	}
	t, err := template.New(name).Delims("<<", ">>").Option("missingkey=error").Parse(r.MetricsQuery)
	if err != nil {
		return nil, fmt.Errorf("metricsQuery: %w", err)
	}
	m.query = t
	// A template naming a field we do not provide (prometheus-adapter also has
	// LabelValuesByName and GroupBySlice) fails only when executed: fail at load instead.
	if _, err := m.Render(QueryArgs{Series: m.Series, LabelMatchers: `x="y"`, GroupBy: m.PodLabel}); err != nil {
		return nil, err
	}
	return m, nil
}

// metricName applies name.matches/as the way prometheus-adapter does: `as` is a regexp
// expansion template; when empty it is $1 if matches has one capture group, else $0.
func metricName(n NameRule, series string) (string, error) {
	pattern := n.Matches
	if pattern == "" {
		pattern = ".*"
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return "", fmt.Errorf("name.matches: %w", err)
	}
	idx := re.FindStringSubmatchIndex(series)
	if idx == nil {
		return "", fmt.Errorf("name.matches %q does not match series %s", n.Matches, series)
	}
	as := n.As
	if as == "" {
		as = "$0"
		if re.NumSubexp() == 1 {
			as = "$1"
		}
	}
	name := string(re.ExpandString(nil, as, series, idx))
	if name == "" {
		return "", fmt.Errorf("name.as %q gives an empty metric name for %s", n.As, series)
	}
	return name, nil
}

// labelMatchers renders matchers for a template's <<.LabelMatchers>>. Values are quoted as Go
// strings, which is PromQL's string literal syntax.
func labelMatchers(ms []matcher) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.label + m.op + strconv.Quote(m.value)
	}
	return strings.Join(parts, ",")
}

// matcher is one PromQL label matcher: label, operator (= != =~ !~) and value.
type matcher struct{ label, op, value string }
