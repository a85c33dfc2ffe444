package broker

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"net/http"

	"github.com/replmesh/replmesh/transport"
)

// statusPage is the operator's status page: one static HTML file with its
// style and script inline. The script loads api/status every 1.5 s and
// updates the tables in place; it writes every value as text, never as
// markup.
//
//go:embed statuspage.html
var statusPage []byte

// statusPageCSP lets the page run its own inline script and style (by
// hash) and fetch from its own origin, and nothing else: a value that
// slipped into markup still could not run.
var statusPageCSP = "default-src 'none'; script-src " + inlineHash("script") + "; style-src " + inlineHash("style") +
	"; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash is the CSP source of the one inline <tag> of statusPage.
func inlineHash(tag string) string {
	_, rest, ok := bytes.Cut(statusPage, []byte("<"+tag+">"))
	body, _, ok2 := bytes.Cut(rest, []byte("</"+tag+">"))
	if !ok || !ok2 {
		panic("broker: statuspage.html lacks its <" + tag + "> element")
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// StatusHandler serves the broker's status over HTTP:
//
//	GET /            a page for an operator to keep open: brokers, this
//	                 broker's view of the raft group (its role, term, commit
//	                 and applied index, the leader, the voters), services
//	                 (primary, epoch, standbys, table heads), subscriptions
//	                 (configured and running mode, applied seq, lag, state,
//	                 full-transfer progress), instances and the refused
//	                 Registers (a second process with a live instance's
//	                 name: who tried, from where, the holder's address,
//	                 when), refreshed in place every 1.5 s
//	GET /api/status  the Status response as JSON (snake_case keys)
//
// Mount it at "/" of an HTTP server (more specific patterns of the same
// mux, such as /metrics, still win); other paths are 404. The page refers
// to api/status relatively, so it also works mounted under a prefix with
// http.StripPrefix.
func (b *Broker) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", statusPageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(statusPage)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Status(r.Context(), &transport.StatusRequest{Version: transport.ProtocolVersion})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		// Encoded whole before anything is written, so that a value JSON
		// cannot hold is a 500 that says so, not a 200 with half a body.
		body, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			http.Error(w, "encode status: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		_, _ = w.Write(append(body, '\n'))
	})
	return mux
}
