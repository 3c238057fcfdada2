package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"godwit/migrate"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"
)

// series is what migrate.NewMetrics registers: metric family name to type
// and label names.
type series struct {
	typ    dto.MetricType
	labels map[string]bool
}

func registry(t *testing.T) map[string]series {
	t.Helper()
	reg := prometheus.NewRegistry()
	if _, err := migrate.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]series{}
	for _, mf := range mfs {
		s := series{typ: mf.GetType(), labels: map[string]bool{}}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = true
			}
		}
		out[mf.GetName()] = s
	}
	return out
}

func TestDashboardPanels(t *testing.T) {
	var d dashboard
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard has no uid, title or panels")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || refs[tg.RefID] {
				t.Errorf("panel %q: empty query or refId %q twice", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			for _, m := range regexp.MustCompile(`\$(\w+)`).FindAllStringSubmatch(tg.Expr, -1) {
				if !strings.HasPrefix(m[1], "__") && !vars[m[1]] {
					t.Errorf("panel %q uses $%s, which the dashboard does not define", p.Title, m[1])
				}
			}
		}
	}
}

var (
	metricRe  = regexp.MustCompile(`\bgodwit_\w+`)
	byRe      = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcherRe = regexp.MustCompile(`\{([^}]*)\}`)
	labelRe   = regexp.MustCompile(`(\w+)\s*(?:=~|!~|!=|=)`)
)

// Every metric a panel queries is one migrate.NewMetrics registers, with a
// suffix its type has, and every label a query groups or filters by is one
// those metrics carry (or a target label); every registered metric is on
// some panel.
func TestDashboardQueriesMetrics(t *testing.T) {
	reg := registry(t)
	qs, err := DashboardQueries("5m")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, q := range qs {
		names := metricRe.FindAllString(q.Expr, -1)
		if len(names) == 0 {
			t.Errorf("panel %q: query names no godwit metric: %s", q.Panel, q.Expr)
		}
		labels := map[string]bool{"instance": true, "job": true}
		for _, n := range names {
			base, s, ok := lookup(reg, n)
			if !ok {
				t.Errorf("panel %q: %s is not a metric of migrate/metrics.go", q.Panel, n)
				continue
			}
			used[base] = true
			for l := range s.labels {
				labels[l] = true
			}
			if s.typ == dto.MetricType_HISTOGRAM {
				labels["le"] = true
			}
		}
		var ls []string
		for _, m := range byRe.FindAllStringSubmatch(q.Expr, -1) {
			for _, l := range strings.Split(m[1], ",") {
				ls = append(ls, strings.TrimSpace(l))
			}
		}
		for _, m := range matcherRe.FindAllStringSubmatch(q.Expr, -1) {
			for _, l := range labelRe.FindAllStringSubmatch(m[1], -1) {
				ls = append(ls, l[1])
			}
		}
		for _, l := range ls {
			if l != "" && !labels[l] {
				t.Errorf("panel %q: label %q is on none of the metrics in %s", q.Panel, l, q.Expr)
			}
		}
	}
	var unused []string
	for n := range reg {
		if !used[n] {
			unused = append(unused, n)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("metrics on no panel: %v", unused)
	}
}

// lookup finds the family of a series name: a histogram's _bucket, _sum and
// _count series belong to it; a counter or gauge is named as registered.
func lookup(reg map[string]series, name string) (string, series, bool) {
	if s, ok := reg[name]; ok {
		return name, s, s.typ != dto.MetricType_HISTOGRAM
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			if s, ok := reg[base]; ok && s.typ == dto.MetricType_HISTOGRAM {
				return base, s, true
			}
		}
	}
	return "", series{}, false
}

// Prometheus's own parser accepts every query: promtool checks them as
// recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	qs, err := DashboardQueries("5m")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, q := range qs {
		expr, err := json.Marshal(q.Expr) // a JSON string is a YAML string
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - record: godwit:dashboard_query_%d\n        expr: %s\n", i, expr)
	}
	rules := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(rules, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", rules)
}

func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool (Debian package prometheus, installed by scripts/setup): %v", err)
	}
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPrometheusConfig(t *testing.T) {
	promtool(t, "check", "config", filepath.Join("prometheus", "prometheus.yml"))
	// The Kubernetes one needs a Prometheus with Kubernetes discovery
	// (Debian's has none): check that it keeps the DaemonSet's pods on their
	// metrics port.
	b, err := os.ReadFile(filepath.Join("prometheus", "prometheus-kubernetes.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			Relabel []struct {
				Source []string `yaml:"source_labels"`
				Regex  string   `yaml:"regex"`
				Action string   `yaml:"action"`
			} `yaml:"relabel_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	ds := daemonSet(t)
	keep := map[string]string{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, r := range sc.Relabel {
			if r.Action == "keep" && len(r.Source) == 1 {
				keep[r.Source[0]] = r.Regex
			}
		}
	}
	if got, want := keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"], ds.Spec.Template.Metadata.Labels["app.kubernetes.io/name"]; got != want || want == "" {
		t.Errorf("scrape keeps pods labelled %q, the DaemonSet's are %q", got, want)
	}
	if got := keep["__meta_kubernetes_pod_container_port_name"]; got != "metrics" {
		t.Errorf("scrape keeps port %q, want metrics", got)
	}
}

type container struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	SecurityContext struct {
		Privileged bool `yaml:"privileged"`
	} `yaml:"securityContext"`
	Resources struct {
		Limits map[string]string `yaml:"limits"`
	} `yaml:"resources"`
}

type daemonSetManifest struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				HostPID        bool        `yaml:"hostPID"`
				HostNetwork    bool        `yaml:"hostNetwork"`
				InitContainers []container `yaml:"initContainers"`
				Containers     []container `yaml:"containers"`
				Volumes        []struct {
					Name   string `yaml:"name"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func daemonSet(t *testing.T) daemonSetManifest {
	t.Helper()
	f, err := os.Open(filepath.Join("kubernetes", "godwit-agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var found []daemonSetManifest
	for {
		var m daemonSetManifest
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("godwit-agent.yaml: %v", err)
		}
		if m.Kind == "DaemonSet" {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d DaemonSets in godwit-agent.yaml, want 1", len(found))
	}
	return found[0]
}

// agentArgs returns the arguments after "agent" in a command line.
func agentArgs(cmd []string) []string {
	i := slices.Index(cmd, "agent")
	if i < 0 {
		return nil
	}
	return cmd[i+1:]
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func TestDaemonSet(t *testing.T) {
	ds := daemonSet(t)
	sp := ds.Spec.Template.Spec
	if !sp.HostPID || !sp.HostNetwork {
		t.Errorf("hostPID %v hostNetwork %v: migrated programs keep their PIDs and addresses only in the host's namespaces", sp.HostPID, sp.HostNetwork)
	}
	if len(sp.Containers) != 1 {
		t.Fatalf("%d containers, want the agent", len(sp.Containers))
	}
	c := sp.Containers[0]
	if !c.SecurityContext.Privileged {
		t.Error("the agent container is not privileged")
	}
	if len(c.Resources.Limits) > 0 {
		t.Error("resource limits would become the migrated programs' cgroup limits")
	}
	args := agentArgs(c.Command)
	if args == nil {
		t.Fatalf("the agent container does not run godwit agent: %v", c.Command)
	}
	for _, f := range []string{"--tls-cacert", "--tls-cert", "--tls-key", "--images-dir", "--metrics-address", "--port"} {
		if flagValue(args, f) == "" {
			t.Errorf("the agent runs without %s", f)
		}
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if m := flagValue(args, "--metrics-address"); !strings.HasSuffix(m, fmt.Sprintf(":%d", ports["metrics"])) || ports["metrics"] == 0 {
		t.Errorf("--metrics-address %s is not on the port named metrics (%d)", m, ports["metrics"])
	}
	if p := flagValue(args, "--port"); p != fmt.Sprint(ports["migrate"]) {
		t.Errorf("--port %s, the port named migrate is %d", p, ports["migrate"])
	}
	// The secret reaches the host path the agent's flags name.
	secret := ""
	for _, v := range sp.Volumes {
		if v.Secret != nil {
			secret = v.Name
		}
	}
	if secret == "" {
		t.Fatal("no secret volume holds the TLS files")
	}
	mounted := false
	for _, ic := range sp.InitContainers {
		for _, vm := range ic.VolumeMounts {
			if vm.Name == secret {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Error("the TLS secret is mounted in no init container")
	}
}

var continuation = regexp.MustCompile(`\\\n\s*`)

// unitExecStart returns the unit's ExecStart command line.
func unitExecStart(t *testing.T, unit string) []string {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(continuation.ReplaceAllString(string(b), " "), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("%s has no ExecStart", unit)
	return nil
}

func TestSystemdUnit(t *testing.T) {
	unit := filepath.Join("systemd", "godwit-agent.service")
	cmd := unitExecStart(t, unit)
	args := agentArgs(cmd)
	for _, f := range []string{"--tls-cacert", "--tls-cert", "--tls-key", "--images-dir", "--metrics-address", "--port"} {
		if flagValue(args, f) == "" {
			t.Errorf("the unit runs the agent without %s", f)
		}
	}
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	// Directives whose sandbox the restored programs would inherit.
	for _, d := range []string{"ProtectSystem=", "PrivateTmp=", "SystemCallFilter=", "NoNewPrivileges=", "CapabilityBoundingSet=", "MemoryDenyWriteExecute="} {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, d) {
				t.Errorf("%s: %s would confine every migrated program too", unit, line)
			}
		}
	}
	if !strings.Contains(string(b), "\nKillMode=process\n") {
		t.Errorf("%s: stopping the agent would kill the programs it restored (KillMode=process)", unit)
	}
	// systemd's own check, with the binary where the unit expects it.
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "godwit")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(b), "ExecStart="+cmd[0], "ExecStart="+bin, 1)
	tmpUnit := filepath.Join(dir, "godwit-agent.service")
	if err := os.WriteFile(tmpUnit, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sa, "verify", tmpUnit).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The unit and the DaemonSet run `godwit agent` with flags it has, and
// values it parses: godwit parses their command lines (with --help, which
// stops before anything runs).
func TestAgentCommandLines(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "godwit")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/godwit").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ds := daemonSet(t)
	for name, args := range map[string][]string{
		"systemd unit": agentArgs(unitExecStart(t, filepath.Join("systemd", "godwit-agent.service"))),
		"DaemonSet":    agentArgs(ds.Spec.Template.Spec.Containers[0].Command),
	} {
		out, err := exec.Command(bin, append(append([]string{"agent"}, args...), "--help")...).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("Usage:")) {
			t.Errorf("%s: godwit agent %v: %v\n%s", name, args, err, out)
		}
		var bad bytes.Buffer
		for _, a := range args {
			// A misspelt flag is refused before --help is seen.
			if strings.HasPrefix(a, "--") && !bytes.Contains(out, []byte(strings.SplitN(a, "=", 2)[0]+" ")) {
				fmt.Fprintf(&bad, " %s", a)
			}
		}
		if bad.Len() > 0 {
			t.Errorf("%s: flags not in godwit agent --help:%s", name, bad.String())
		}
	}
}
