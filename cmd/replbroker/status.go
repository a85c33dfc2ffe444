package main

import (
	"encoding/json"
	"html/template"
	"net/http"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/transport"
)

func getStatus(b *broker.Broker, r *http.Request) (*transport.StatusResponse, error) {
	return b.Status(r.Context(), &transport.StatusRequest{Version: transport.ProtocolVersion})
}

// statusJSON serves the Status response as JSON.
func statusJSON(b *broker.Broker) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		st, err := getStatus(b, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	}
}

// subRow is one subscription on the status page.
type subRow struct {
	Consumer string // service/instance
	Service  string
	Table    string
	Mode     string
	Seq      uint64
	Head     uint64 // the primary's head as last reported (0: unknown)
	Behind   uint64 // Head - Seq, when both are known
	Lag      uint64 // as the consumer reported it
	Stale    string
	State    string
}

type pageData struct {
	Status *transport.StatusResponse
	Subs   []subRow
	Now    string
}

// statusPage serves a small HTML page: brokers, services with their
// primary, epoch and standbys, instances, and every subscription's lag.
func statusPage(b *broker.Broker) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		st, err := getStatus(b, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		heads := map[string]uint64{} // service/table -> primary head
		for _, o := range st.Owners {
			for _, t := range o.Tables {
				heads[o.Service+"/"+t.Table] = t.Head
			}
		}
		d := pageData{Status: st, Now: time.Now().UTC().Format(time.RFC3339)}
		for _, in := range st.Instances {
			for _, s := range in.Subscriptions {
				row := subRow{
					Consumer: in.Service + "/" + in.Instance, Service: s.Service, Table: s.Table,
					Mode: s.Mode, Seq: s.Seq, Lag: s.Lag, State: s.State,
				}
				if ov := st.Overrides[s.Service+"/"+s.Table]; ov != "" {
					row.Mode = ov + " (override)"
				}
				if h, ok := heads[s.Service+"/"+s.Table]; ok {
					row.Head = h
					if h > s.Seq {
						row.Behind = h - s.Seq
					}
				}
				if s.StaleMs > 0 {
					row.Stale = (time.Duration(s.StaleMs) * time.Millisecond).String()
				}
				d.Subs = append(d.Subs, row)
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := page.Execute(w, d); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}
}

var page = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>replbroker {{.Status.Broker}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3} .num{text-align:right} .muted{color:#888}
</style></head><body>
<h1>replbroker {{.Status.Broker}}</h1>
<p class="muted">{{.Now}} · refreshes every 5s · <a href="/api/status">/api/status</a> · <a href="/metrics">/metrics</a></p>

<h2>Brokers</h2>
<table><tr><th>name</th><th>gRPC address</th><th>state</th></tr>
{{range .Status.Brokers}}<tr><td>{{.Name}}</td><td>{{.Addr}}</td><td>{{.State}}</td></tr>
{{end}}</table>

<h2>Services</h2>
<table><tr><th>service</th><th>epoch</th><th>primary</th><th>standbys</th><th>tables (head seq)</th></tr>
{{range .Status.Owners}}<tr><td>{{.Service}}</td><td class="num">{{.Epoch}}</td>
<td>{{if .Primary.Instance}}{{.Primary.Instance}} <span class="muted">{{.Primary.Addr}}</span>{{else}}<b>none</b>{{end}}</td>
<td>{{range .Standbys}}{{.Instance}} <span class="muted">{{.Addr}}</span><br>{{end}}</td>
<td>{{range .Tables}}{{.Table}} ({{.Head}}){{if .Mode}} <span class="muted">{{.Mode}}</span>{{end}}<br>{{end}}</td></tr>
{{else}}<tr><td colspan="5" class="muted">no owner service registered</td></tr>
{{end}}</table>

<h2>Instances</h2>
<table><tr><th>service</th><th>instance</th><th>role</th><th>address</th><th>session on</th></tr>
{{range .Status.Instances}}<tr><td>{{.Service}}</td><td>{{.Instance}}</td><td>{{.Role}}</td><td>{{.Addr}}</td>
<td>{{if .Broker}}{{.Broker}}{{else}}<b>no session</b>{{end}}</td></tr>
{{else}}<tr><td colspan="5" class="muted">no instance registered</td></tr>
{{end}}</table>

<h2>Subscriptions</h2>
<table><tr><th>consumer</th><th>table</th><th>mode</th><th>applied seq</th><th>owner head</th><th>behind (seqs)</th><th>reported lag</th><th>staleness</th><th>state</th></tr>
{{range .Subs}}<tr><td>{{.Consumer}}</td><td>{{.Service}}/{{.Table}}</td><td>{{.Mode}}</td>
<td class="num">{{.Seq}}</td><td class="num">{{.Head}}</td><td class="num">{{.Behind}}</td><td class="num">{{.Lag}}</td>
<td>{{.Stale}}</td><td>{{.State}}</td></tr>
{{else}}<tr><td colspan="9" class="muted">no subscription</td></tr>
{{end}}</table>

{{with .Status.Overrides}}<h2>Mode overrides</h2>
<table><tr><th>table</th><th>mode</th></tr>
{{range $k, $v := .}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}
</table>{{end}}
</body></html>
`))
