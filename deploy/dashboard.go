// Package deploy holds what runs godwit agents in production (systemd unit,
// Kubernetes DaemonSet, Prometheus scrape configs, Grafana dashboard) and
// reads the dashboard's queries for the tests that check them against the
// metrics godwit exports.
package deploy

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"strings"
)

// Dashboard is grafana/godwit-migrations.json.
//
//go:embed grafana/godwit-migrations.json
var Dashboard []byte

type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID      int    `json:"id"`
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	} `json:"panels"`
}

// Query is one PromQL expression of one panel.
type Query struct {
	Panel string
	Expr  string
}

// DashboardQueries returns every panel's queries with Grafana's variables
// replaced by values Prometheus accepts: $instance by a regexp matching
// every agent, the intervals by window (e.g. "5m").
func DashboardQueries(window string) ([]Query, error) {
	var d dashboard
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		return nil, fmt.Errorf("grafana dashboard: %w", err)
	}
	r := strings.NewReplacer("$__rate_interval", window, "$__range", window, "$__interval", window, "$instance", ".*")
	var qs []Query
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			qs = append(qs, Query{Panel: p.Title, Expr: r.Replace(tg.Expr)})
		}
	}
	return qs, nil
}
