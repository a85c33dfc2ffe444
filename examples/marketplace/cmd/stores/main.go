// Command stores runs one instance of the marketplace's Stores service
// (package stores) as a process: it owns the tables `stores` and
// `store_managers` and serves a small HTTP JSON API to change them. Several
// instances may run: the broker makes one the primary and the others
// standbys that keep a copy of its tables and take over when it goes away
// (the instance registers as an owner, Config.Owner).
//
//	stores -instance stores-1 -http 127.0.0.1:8081 -data /var/lib/stores-1 \
//	       -brokers 127.0.0.1:7400 -modes modes.yaml -min-sync-standbys 1
//
// HTTP API (JSON in and out; every error is {"error": "..."}):
//
//	POST   /stores                      {"id": "S1", "name": "Lamps & Co"}  -> 201 {"table": "stores", "seq": 1}
//	GET    /stores/{id}                 -> 200 {"id", "name", "managers": [...]} (the owner's copy)
//	POST   /stores/{id}/managers        {"user": "alice"}                   -> 201 {"table": "store_managers", "seq": 2}
//	DELETE /stores/{id}/managers/{user} -> 200 {"table": "store_managers", "seq": 3}
//	GET    /status                      -> 200 {"instance", "role", "epoch", "tables": [{"table", "head", "log_id"}], ...}
//	GET    /metrics                     -> Prometheus text
//
// Every write answers with its commit {table, seq}: hand it to products
// (field "wait_for") for read-your-writes across services. Errors: 400 a
// bad body or id, 404 no such store, 409 the store exists, 503 this
// instance is not the primary (the error names the primary) or no standby
// confirms writes yet (-min-sync-standbys; nothing was written, retry),
// 504 the write is committed on the primary but no standby confirmed it in
// time (the body carries its commit).
//
// With -min-sync-standbys a write is first refused, with nothing written,
// while fewer standbys are connected; the API waits for one for up to
// -sync-timeout before answering 503, so that a write sent right after a
// standby (re)starts goes through.
//
// With -tls-ca, -tls-cert and -tls-key every replication link runs on
// mTLS, the certificate proving the instance's identity
// (spiffe://TRUST-DOMAIN/replmesh/SERVICE/INSTANCE, see `replctl tls cert
// create`); -policy names the access policy file saying which services may
// read which tables. On SIGHUP it reloads both (the TLS files are also
// picked up when they change).
//
// On SIGTERM or SIGINT it stops the HTTP server gracefully and closes the
// component (its consumers keep their replicas and resume when it returns).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/replmesh/replmesh/examples/marketplace/cmd/internal/svc"
	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

func main() { svc.Main("stores", run) }

// run starts the instance and serves until ctx is done.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	f, log, cfg, err := svc.Parse(stores.ServiceName, "stores-1", "127.0.0.1:8081", args, stderr)
	if err != nil {
		return err
	}
	open := func(ctx context.Context) (*stores.Service, error) { return stores.Open(ctx, cfg) }
	return svc.Run(ctx, log, open, func(s *stores.Service) error {
		defer f.ReloadOnHUP(ctx, s.Component(), log)()
		h := &handler{s: s, log: log, syncTimeout: cfg.SyncTimeout}
		return f.Serve(ctx, log, h.mux(svc.MetricsHandler(svc.Registry(s.Component()))), func(addr string) {
			log.Info("stores serving", "http", addr, "addr", s.Addr(), "brokers", cfg.Brokers, "data_dir", cfg.DataDir,
				"min_sync_standbys", cfg.MinSyncStandbys, "modes", f.Modes, "mtls", cfg.TLS != nil, "policy", f.Policy)
		})
	})
}

type handler struct {
	s           *stores.Service
	log         *slog.Logger
	syncTimeout time.Duration
}

func (h *handler) mux(metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /stores", h.createStore)
	mux.HandleFunc("GET /stores/{id}", h.getStore)
	mux.HandleFunc("POST /stores/{id}/managers", h.addManager)
	mux.HandleFunc("DELETE /stores/{id}/managers/{user}", h.revokeManager)
	mux.HandleFunc("GET /status", h.status)
	mux.Handle("GET /metrics", metrics)
	return mux
}

// commitBody is a write's answer: the commit to wait for.
type commitBody struct {
	Table string `json:"table"`
	Seq   uint64 `json:"seq"`
}

// commitError is the answer of a write committed on the primary whose
// standby confirmation is missing.
type commitError struct {
	Error string `json:"error"`
	Table string `json:"table"`
	Seq   uint64 `json:"seq"`
}

func (h *handler) createStore(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	if !svc.ReadJSON(w, r, &req) {
		return
	}
	h.write(w, r, http.StatusCreated, "create store", func(ctx context.Context) (stores.Commit, error) {
		return h.s.CreateStore(ctx, req.ID, req.Name)
	})
}

func (h *handler) addManager(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User string `json:"user"`
	}
	if !svc.ReadJSON(w, r, &req) {
		return
	}
	id := r.PathValue("id")
	h.write(w, r, http.StatusCreated, "add manager", func(ctx context.Context) (stores.Commit, error) {
		return h.s.AddManager(ctx, id, req.User)
	})
}

func (h *handler) revokeManager(w http.ResponseWriter, r *http.Request) {
	id, user := r.PathValue("id"), r.PathValue("user")
	h.write(w, r, http.StatusOK, "revoke manager", func(ctx context.Context) (stores.Commit, error) {
		return h.s.RevokeManager(ctx, id, user)
	})
}

// write runs fn, waiting (up to syncTimeout) while it is refused with
// nothing written because too few standbys are connected, and answers
// with the commit or the error.
func (h *handler) write(w http.ResponseWriter, r *http.Request, okCode int, what string, fn func(context.Context) (stores.Commit, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*h.syncTimeout)
	defer cancel()
	deadline := time.Now().Add(h.syncTimeout)
	var (
		c   stores.Commit
		err error
	)
	for {
		c, err = fn(ctx)
		if !errors.Is(err, replica.ErrNotReplicated) || c.Seq != 0 || time.Now().After(deadline) {
			break
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
	}
	switch {
	case err == nil:
		h.log.Info(what, "table", c.Table, "seq", c.Seq)
		svc.WriteJSON(w, okCode, commitBody{Table: c.Table, Seq: c.Seq})
	case errors.Is(err, stores.ErrInvalidID):
		svc.WriteError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, stores.ErrNoStore):
		svc.WriteError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, stores.ErrStoreExists):
		svc.WriteError(w, http.StatusConflict, err.Error())
	case errors.Is(err, transport.ErrNotPrimary):
		// The replica's error names the primary (instance and address).
		svc.WriteError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, replica.ErrNotReplicated) && c.Seq != 0:
		h.log.Warn(what+": committed but not confirmed by a standby", "table", c.Table, "seq", c.Seq, "err", err)
		svc.WriteJSON(w, http.StatusGatewayTimeout, commitError{Error: err.Error(), Table: c.Table, Seq: c.Seq})
	case errors.Is(err, replica.ErrNotReplicated), errors.Is(err, replica.ErrClosed):
		svc.WriteError(w, http.StatusServiceUnavailable, err.Error())
	default:
		h.log.Error(what, "err", err)
		svc.WriteError(w, http.StatusInternalServerError, err.Error())
	}
}

// storeBody is a store with its managers, as this instance holds them.
type storeBody struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Managers  []string  `json:"managers"`
}

func (h *handler) getStore(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := stores.ValidID("store", id); err != nil {
		svc.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	st, found, err := h.s.Store(id)
	if err != nil {
		svc.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if !found {
		svc.WriteError(w, http.StatusNotFound, fmt.Sprintf("%v: %s", stores.ErrNoStore, id))
		return
	}
	mgrs, err := h.s.Managers(id)
	if err != nil {
		svc.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	svc.WriteJSON(w, http.StatusOK, storeBody{ID: st.ID, Name: st.Name, CreatedAt: time.Unix(0, st.CreatedAt).UTC(), Managers: append([]string{}, mgrs...)})
}

// statusBody is GET /status.
type statusBody struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	// Role is primary, standby, or "" until a broker has answered.
	Role            string      `json:"role"`
	Epoch           uint64      `json:"epoch"`
	Addr            string      `json:"addr"`
	MinSyncStandbys int         `json:"min_sync_standbys"`
	Tables          []tableBody `json:"tables"`
}

type tableBody struct {
	Table string `json:"table"`
	Head  uint64 `json:"head"`
	LogID string `json:"log_id"`
}

func (h *handler) status(w http.ResponseWriter, _ *http.Request) {
	c := h.s.Component()
	role, epoch := c.Role()
	b := statusBody{Service: stores.ServiceName, Instance: h.s.Instance(), Role: role, Epoch: epoch, Addr: c.Addr(),
		MinSyncStandbys: c.Config().MinSyncStandbys}
	for _, t := range h.s.Tables() {
		b.Tables = append(b.Tables, tableBody{Table: t.Name(), Head: t.Head(), LogID: t.LogID()})
	}
	svc.WriteJSON(w, http.StatusOK, b)
}
