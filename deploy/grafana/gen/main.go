// Command gen writes kvsync's Grafana dashboard, deploy/grafana/kvsync-dashboard.json,
// to standard output:
//
//	cd deploy/grafana/gen && go run . > ../kvsync-dashboard.json
//
// It is a module of its own so that kvsync's go.mod never depends on the
// Grafana SDK. The JSON is committed for users to import; TestCommitted fails
// when it is not what this program writes, so edit this file, not the JSON.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// sel is the label selector every query carries, so that one dashboard
// serves a fleet: pick the job, then one or all daemons. syncSel narrows the
// per-sync series further to the syncs picked; the API series are per
// account and carry no sync label.
const (
	sel     = `job=~"$job", instance=~"$instance"`
	syncSel = sel + `, sync=~"$sync"`
)

// tokenBudget is Cloudflare's request budget per 5-minute window
// (kvapi.AccountBudget, api.budget's default); the budget panel is relative
// to it. Cloudflare counts it per API token, across every client using it.
const tokenBudget = 1200

var ds = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Datasource(ds)
}

// ids numbers panels and rows in the order they are built: Grafana keys
// links and saved panel state on them, and the SDK leaves them unset.
type ids uint32

func (n *ids) next() uint32 { *n++; return uint32(*n) }

func graph(id uint32, title, unit, desc string, targets ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Id(id).
		Title(title).Description(desc).Unit(unit).Min(0).
		Datasource(ds).Height(8).Span(12).FillOpacity(10)
	for i, t := range targets {
		p.WithTarget(t.RefId(string(rune('A' + i))))
	}
	return p
}

func steps(base string, more ...dashboard.Threshold) cog.Builder[dashboard.ThresholdsConfig] {
	return dashboard.NewThresholdsConfigBuilder().
		Mode(dashboard.ThresholdsModeAbsolute).
		Steps(append([]dashboard.Threshold{{Value: nil, Color: base}}, more...))
}

// build uses the classic dashboard schema, which the SDK marks deprecated in
// favour of dashboardv2: Grafana before 13 imports classic JSON with no
// feature toggle (13 converts it to v2 on load), while v2 JSON needs 12's
// Dynamic Dashboards and kubernetesDashboards toggles.
func build() (dashboard.Dashboard, error) {
	var id ids
	rate := func(metric, by string) string {
		return fmt.Sprintf(`sum by (%s) (rate(%s{%s}[$__rate_interval]))`, by, metric, sel)
	}
	syncRate := func(metric, by string) string {
		return fmt.Sprintf(`sum by (sync, %s) (rate(%s{%s}[$__rate_interval]))`, by, metric, syncSel)
	}
	return dashboard.NewDashboardBuilder("kvsync").
		Uid("kvsync").
		Description("kvsync publishing a directory tree to Workers KV: writes, API health, rate limits and sync freshness.").
		Tags([]string{"kvsync", "cloudflare", "workers-kv"}).
		Refresh("1m").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Data source").Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("job").
			Label("Job").Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(kvsync_build_info, job)")}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc)).
		WithVariable(dashboard.NewQueryVariableBuilder("instance").
			Label("Instance").Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr(`label_values(kvsync_build_info{job=~"$job"}, instance)`)}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).IncludeAll(true).AllValue(".*")).
		WithVariable(dashboard.NewQueryVariableBuilder("sync").
			Label("Sync").Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr(fmt.Sprintf(`label_values(kvsync_queue_depth{%s}, sync)`, sel))}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).IncludeAll(true).AllValue(".*")).
		WithRow(dashboard.NewRowBuilder("Freshness").Id(id.next())).
		WithPanel(stat.NewPanelBuilder().Id(id.next()).
			Title("Since last successful sync").
			Description("Age of kvsync_last_successful_sync_timestamp_seconds, per sync: how long KV has not been known to hold the sync's whole tree. " +
				"An idle tree ages it up to rescan_interval (1h by default); KvsyncNotSynced fires past 2h. Empty until the first clean sync.").
			Datasource(ds).Unit("s").Height(6).Span(8).
			ColorMode(common.BigValueColorModeBackground).
			GraphMode(common.BigValueGraphModeNone).
			Thresholds(steps("green",
				dashboard.Threshold{Value: cog.ToPtr(3600.0 * 1.25), Color: "orange"},
				dashboard.Threshold{Value: cog.ToPtr(3600.0 * 2), Color: "red"})).
			WithTarget(query(fmt.Sprintf(`time() - (kvsync_last_successful_sync_timestamp_seconds{%s} > 0)`, syncSel), "{{instance}} {{sync}}").RefId("A").Instant())).
		WithPanel(stat.NewPanelBuilder().Id(id.next()).
			Title("Queue depth").
			Description("Keys waiting to be written or deleted (kvsync_queue_depth).").
			Datasource(ds).Unit("short").Height(6).Span(8).
			GraphMode(common.BigValueGraphModeArea).
			Thresholds(steps("green")).
			WithTarget(query(fmt.Sprintf(`sum(kvsync_queue_depth{%s})`, syncSel), "queued").RefId("A"))).
		WithPanel(stat.NewPanelBuilder().Id(id.next()).
			Title("Files held back").
			Description("Files held back now (kvsync_files_held_back): too large, unreadable, an invalid sidecar, changed since the scan. Their keys are neither written nor deleted until the file changes or the next full sync; the log names each file.").
			Datasource(ds).Unit("short").Height(6).Span(8).
			ColorMode(common.BigValueColorModeBackground).
			GraphMode(common.BigValueGraphModeNone).
			Thresholds(steps("green", dashboard.Threshold{Value: cog.ToPtr(1.0), Color: "orange"})).
			WithTarget(query(fmt.Sprintf(`sum(kvsync_files_held_back{%s})`, syncSel), "held back").RefId("A").Instant())).
		WithRow(dashboard.NewRowBuilder("Writes").Id(id.next())).
		WithPanel(graph(id.next(), "Uploads", "ops", "Keys written per second, by sync and result (kvsync_uploads_total).",
			query(syncRate("kvsync_uploads_total", "result"), "{{sync}} {{result}}"))).
		WithPanel(graph(id.next(), "Bytes uploaded", "Bps", "Value bytes sent in writes per second, by sync and result (kvsync_upload_bytes_total).",
			query(syncRate("kvsync_upload_bytes_total", "result"), "{{sync}} {{result}}"))).
		WithPanel(graph(id.next(), "Queue and in-flight", "short", "Keys waiting (kvsync_queue_depth) and writes or deletes in flight (kvsync_inflight_uploads), by sync.",
			query(fmt.Sprintf(`sum by (sync) (kvsync_queue_depth{%s})`, syncSel), "{{sync}} queued"),
			query(fmt.Sprintf(`sum by (sync) (kvsync_inflight_uploads{%s})`, syncSel), "{{sync}} in flight"))).
		WithPanel(graph(id.next(), "Deletes", "ops", "Keys whose file went away, by sync and what was done (kvsync_deletes_total).",
			query(syncRate("kvsync_deletes_total", "result"), "{{sync}} {{result}}"))).
		WithRow(dashboard.NewRowBuilder("Workers KV API").Id(id.next())).
		WithPanel(graph(id.next(), "API latency", "s", "Request latency by operation, 50th and 99th percentile (kvsync_api_request_duration_seconds).",
			query(fmt.Sprintf(`histogram_quantile(0.5, sum by (le, op) (rate(kvsync_api_request_duration_seconds_bucket{%s}[$__rate_interval])))`, sel), "p50 {{op}}"),
			query(fmt.Sprintf(`histogram_quantile(0.99, sum by (le, op) (rate(kvsync_api_request_duration_seconds_bucket{%s}[$__rate_interval])))`, sel), "p99 {{op}}"))).
		WithPanel(graph(id.next(), "API errors by Cloudflare code", "ops", "Cloudflare error codes in failed replies per second (kvsync_api_errors_total). 971: the token's request budget; 10022: one write per second per key; 10000: authentication; 10013: namespace not found; 10001: Cloudflare's side (5xx); 10009: key not found, expected when a key to expire is gone.",
			query(rate("kvsync_api_errors_total", "cf_code"), "{{cf_code}}"))).
		WithPanel(graph(id.next(), "API requests by HTTP status", "reqps", `Requests per second by HTTP status (kvsync_api_requests_total); "error" is no reply.`,
			query(rate("kvsync_api_requests_total", "code"), "{{code}}"))).
		WithPanel(graph(id.next(), "Retries by reason", "ops", "Requests sent again (kvsync_api_retries_total).",
			query(rate("kvsync_api_retries_total", "reason"), "{{reason}}"))).
		WithRow(dashboard.NewRowBuilder("Rate limits").Id(id.next())).
		WithPanel(graph(id.next(), "Budget use", "percentunit",
			fmt.Sprintf("Requests in the last 5 minutes over Cloudflare's budget of %d per 5 minutes. The budget is the API token's: add up the daemons that share a token. kvsync's own limiter stays at 1,000 plus a burst of 100 by default.", tokenBudget),
			query(fmt.Sprintf(`sum by (instance) (increase(kvsync_api_requests_total{%s}[5m])) / %d`, sel, tokenBudget), "{{instance}}")).
			AxisSoftMax(1).
			Thresholds(steps("green",
				dashboard.Threshold{Value: cog.ToPtr(1000.0 / tokenBudget), Color: "orange"},
				dashboard.Threshold{Value: cog.ToPtr(1.0), Color: "red"})).
			ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeLine))).
		WithPanel(graph(id.next(), "Rate-limit pauses and limiter wait", "s",
			"99th percentile of the wait for the token bucket or a 429 pause (kvsync_rate_limiter_wait_seconds), and budget pauses (kvsync_rate_limit_pauses_total, right axis).",
			query(fmt.Sprintf(`histogram_quantile(0.99, sum by (le) (rate(kvsync_rate_limiter_wait_seconds_bucket{%s}[$__rate_interval])))`, sel), "p99 wait"),
			query(fmt.Sprintf(`sum(increase(kvsync_rate_limit_pauses_total{%s}[$__rate_interval]))`, sel), "pauses")).
			OverrideByName("pauses", []dashboard.DynamicConfigValue{
				{Id: "unit", Value: "short"},
				{Id: "custom.axisPlacement", Value: "right"},
				{Id: "custom.drawStyle", Value: "bars"},
			})).
		WithPanel(graph(id.next(), "Token bucket and 429 pause", "short",
			"Requests the account's token bucket admits now without waiting (kvsync_rate_limit_tokens, 0 while requests wait for a token), "+
				"and the seconds left of the pause of every request after a 429 (kvsync_rate_limit_paused_until_timestamp_seconds, right axis).",
			query(fmt.Sprintf(`clamp_min(kvsync_rate_limit_tokens{%s}, 0)`, sel), "{{instance}} tokens"),
			query(fmt.Sprintf(`clamp_min(kvsync_rate_limit_paused_until_timestamp_seconds{%s} - time(), 0)`, sel), "{{instance}} paused")).
			OverrideByRegexp(".* paused", []dashboard.DynamicConfigValue{
				{Id: "unit", Value: "s"},
				{Id: "custom.axisPlacement", Value: "right"},
			})).
		WithRow(dashboard.NewRowBuilder("Leader election").Id(id.next())).
		WithPanel(graph(id.next(), "Leader per sync", "short",
			"1 where the instance holds the sync's Lease and writes, 0 where it is a standby that watches and writes nothing (kvsync_leader). "+
				"Exactly one instance per sync should be at 1; KvsyncNoLeader fires when none is for 5 minutes. Empty when leader_election is off.",
			query(fmt.Sprintf(`max by (sync, instance) (kvsync_leader{%s})`, sel), "{{sync}} {{instance}}")).
			Max(1)).
		WithPanel(graph(id.next(), "Leadership changes", "short",
			"Times an instance became leader or standby of a sync, per interval (kvsync_leader_transitions_total). A rollout moves the Lease once per old pod; more means the leader keeps losing it (API server latency, renew_deadline too short).",
			query(fmt.Sprintf(`sum by (sync, to) (increase(kvsync_leader_transitions_total{%s}[$__rate_interval]))`, sel), "{{sync}} to {{to}}"))).
		Build()
}

// render writes the dashboard as committed: indented, with PromQL's
// comparison operators left unescaped where the SDK lets them be.
func render(w io.Writer) error {
	d, err := build()
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

func main() {
	if err := render(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
