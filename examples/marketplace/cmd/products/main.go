// Command products runs one instance of the marketplace's Products service
// (package products) as a process. It subscribes, through the brokers, to
// the Stores service's tables `stores` and `store_managers` and lets a user
// add a product to a store only when the user manages that store, deciding
// from its local replica: it makes no call to stores, so it keeps deciding
// (from the last state it received) while stores and every broker are down.
//
//	products -instance products-1 -http 127.0.0.1:8091 -data /var/lib/products-1 \
//	         -brokers 127.0.0.1:7400 -modes modes.yaml
//
// HTTP API (JSON in and out; every error is {"error": "..."}):
//
//	POST /stores/{id}/products  {"user": "alice", "name": "desk lamp", "price_cents": 1999,
//	                             "wait_for": {"table": "store_managers", "seq": 2}}
//	     -> 201 {"product": {...}, "commit": {"table": "products", "seq": 1}, "decision": {...}}
//	     -> 403 {"error": "alice is not a manager of store S1", "decision": {...}}
//	     -> 503 the replica has not received its first copy yet, or this
//	        instance is a standby of products (see below)
//	GET  /authorize?store=S1&user=alice
//	     -> 200 {"allowed": true, ...} or 403 {"error": reason, ...}: the
//	        decision alone, nothing written (on every instance)
//	GET  /stores/{id}/products   -> 200 [{...}] (this instance's copy)
//	GET  /status                 -> 200 {"role", "ready", "replicas": [{"table", "state", "seq", "lag_seqs", "staleness", "mode", ...}]}
//	GET  /metrics                -> Prometheus text
//
// "wait_for" (optional) is the commit a stores write answered with: the
// decision waits (up to 5s) until the replica holds it (read-your-writes
// across services). A decision answer says what it was based on: the seq
// of the store_managers replica and its staleness.
//
// Products owns a table too, `products`, where the added products go.
// Like any owner service with a broker, its instances are a primary and
// standbys: every instance decides, but only the primary writes the
// product. An allowed POST on a standby answers 503 naming the primary
// (the decision is in the body); a denied one answers 403 everywhere.
//
// With -tls-ca, -tls-cert and -tls-key every replication link runs on
// mTLS, the certificate proving the instance's identity
// (spiffe://TRUST-DOMAIN/replmesh/SERVICE/INSTANCE, see `replctl tls cert
// create`); -policy names the access policy file saying which services may
// read which tables. On SIGHUP it reloads both (the TLS files are also
// picked up when they change).
//
// On SIGTERM or SIGINT it stops the HTTP server gracefully and closes the
// component (the replicas stay on disk and resume on the next start).
package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/replmesh/replmesh/examples/marketplace/cmd/internal/svc"
	"github.com/replmesh/replmesh/examples/marketplace/products"
	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

func main() { svc.Main("products", run) }

// waitForTimeout bounds the wait for a request's "wait_for" commit.
const waitForTimeout = 5 * time.Second

// run starts the instance and serves until ctx is done.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	f, log, cfg, err := svc.Parse(products.ServiceName, "products-1", "127.0.0.1:8091", args, stderr)
	if err != nil {
		return err
	}
	open := func(ctx context.Context) (*products.Service, error) {
		return products.Open(ctx, cfg, products.Options{}) // no address: the brokers say where stores is
	}
	return svc.Run(ctx, log, open, func(s *products.Service) error {
		defer f.ReloadOnHUP(ctx, s.Component(), log)()
		h := &handler{s: s, log: log}
		return f.Serve(ctx, log, h.mux(svc.MetricsHandler(svc.Registry(s.Component()))), func(addr string) {
			log.Info("products serving", "http", addr, "addr", s.Component().Addr(), "brokers", cfg.Brokers, "data_dir", cfg.DataDir, "modes", f.Modes, "mtls", cfg.TLS != nil, "policy", f.Policy)
		})
	})
}

type handler struct {
	s   *products.Service
	log *slog.Logger
}

func (h *handler) mux(metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /stores/{id}/products", h.addProduct)
	mux.HandleFunc("GET /stores/{id}/products", h.listProducts)
	mux.HandleFunc("GET /authorize", h.authorize)
	mux.HandleFunc("GET /status", h.status)
	mux.Handle("GET /metrics", metrics)
	return mux
}

// decisionBody is a decision and what it was based on.
type decisionBody struct {
	Allowed bool   `json:"allowed"`
	Code    string `json:"code"`
	Reason  string `json:"reason"`
	User    string `json:"user"`
	Store   string `json:"store"`
	// ManagersSeq is the seq of the store_managers replica the decision
	// read: it reflects every change up to it.
	ManagersSeq uint64 `json:"managers_seq"`
	// Staleness is how long ago the replica was last known current (0
	// while in touch and caught up).
	Staleness svc.Duration `json:"staleness"`
}

func decisionOf(d products.Decision) decisionBody {
	return decisionBody{Allowed: d.Allowed(), Code: d.Code.String(), Reason: d.Reason, User: d.UserID, Store: d.StoreID,
		ManagersSeq: d.ManagersSeq, Staleness: svc.Duration(d.Staleness)}
}

// deniedBody is a 403 or 503 answer with the decision.
type deniedBody struct {
	Error    string       `json:"error"`
	Decision decisionBody `json:"decision"`
}

type commitBody struct {
	Table string `json:"table"`
	Seq   uint64 `json:"seq"`
}

type productBody struct {
	ID         string    `json:"id"`
	Store      string    `json:"store"`
	Name       string    `json:"name"`
	PriceCents int64     `json:"price_cents"`
	AddedBy    string    `json:"added_by"`
	AddedAt    time.Time `json:"added_at"`
}

func productOf(p products.Product) productBody {
	return productBody{ID: p.ID, Store: p.StoreID, Name: p.Name, PriceCents: p.PriceCents, AddedBy: p.AddedBy, AddedAt: time.Unix(0, p.AddedAt).UTC()}
}

// decide answers a denial or a not-ready replica itself and returns false;
// it returns true for an allowed decision.
func (h *handler) decide(w http.ResponseWriter, d products.Decision, err error) bool {
	switch {
	case errors.Is(err, stores.ErrInvalidID):
		svc.WriteError(w, http.StatusBadRequest, err.Error())
		return false
	case err != nil:
		h.log.Error("authorize", "err", err)
		svc.WriteError(w, http.StatusInternalServerError, err.Error())
		return false
	case d.Code == products.NotReady:
		svc.WriteJSON(w, http.StatusServiceUnavailable, deniedBody{Error: d.Reason, Decision: decisionOf(d)})
		return false
	case !d.Allowed():
		svc.WriteJSON(w, http.StatusForbidden, deniedBody{Error: d.Reason, Decision: decisionOf(d)})
		return false
	}
	return true
}

func (h *handler) addProduct(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User       string      `json:"user"`
		Name       string      `json:"name"`
		PriceCents int64       `json:"price_cents"`
		WaitFor    *commitBody `json:"wait_for"`
	}
	if !svc.ReadJSON(w, r, &req) {
		return
	}
	storeID := r.PathValue("id")
	if req.Name == "" {
		svc.WriteError(w, http.StatusBadRequest, "name: a product needs a name")
		return
	}
	if req.WaitFor != nil && !h.waitFor(w, r, *req.WaitFor) {
		return
	}
	d, err := h.s.Authorize(req.User, storeID)
	if !h.decide(w, d, err) {
		return
	}
	// AddProduct decides again (the replica may have moved on since): its
	// denial is the authoritative one.
	p, seq, err := h.s.AddProduct(r.Context(), req.User, storeID, products.Product{Name: req.Name, PriceCents: req.PriceCents})
	var denied *products.DeniedError
	switch {
	case errors.As(err, &denied):
		h.decide(w, denied.Decision, nil)
	case errors.Is(err, transport.ErrNotPrimary):
		// Allowed, but only the products primary writes the product.
		svc.WriteJSON(w, http.StatusServiceUnavailable, deniedBody{Error: err.Error(), Decision: decisionOf(d)})
	case errors.Is(err, stores.ErrInvalidID):
		svc.WriteError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, replica.ErrNotReplicated), errors.Is(err, replica.ErrClosed):
		svc.WriteError(w, http.StatusServiceUnavailable, err.Error())
	case err != nil:
		h.log.Error("add product", "err", err)
		svc.WriteError(w, http.StatusInternalServerError, err.Error())
	default:
		h.log.Info("product added", "store", storeID, "user", req.User, "product", p.ID, "seq", seq)
		svc.WriteJSON(w, http.StatusCreated, struct {
			Product  productBody  `json:"product"`
			Commit   commitBody   `json:"commit"`
			Decision decisionBody `json:"decision"`
		}{productOf(p), commitBody{Table: products.TableProducts, Seq: seq}, decisionOf(d)})
	}
}

// waitFor waits until the replica holds c; on failure it answers and
// returns false.
func (h *handler) waitFor(w http.ResponseWriter, r *http.Request, c commitBody) bool {
	ctx, cancel := context.WithTimeout(r.Context(), waitForTimeout)
	defer cancel()
	err := h.s.WaitFor(ctx, stores.Commit{Table: c.Table, Seq: c.Seq})
	switch {
	case err == nil:
		return true
	case errors.Is(err, replica.ErrUnknownTable):
		svc.WriteError(w, http.StatusBadRequest, "wait_for: "+err.Error())
	default:
		svc.WriteError(w, http.StatusServiceUnavailable, "wait_for: "+err.Error())
	}
	return false
}

func (h *handler) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d, err := h.s.Authorize(q.Get("user"), q.Get("store"))
	if h.decide(w, d, err) {
		svc.WriteJSON(w, http.StatusOK, decisionOf(d))
	}
}

func (h *handler) listProducts(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := stores.ValidID("store", id); err != nil {
		svc.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	ps, err := h.s.Products(id)
	if err != nil {
		svc.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]productBody, 0, len(ps))
	for _, p := range ps {
		out = append(out, productOf(p))
	}
	svc.WriteJSON(w, http.StatusOK, out)
}

// statusBody is GET /status.
type statusBody struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	// Role and Epoch are this instance's standing for its own table
	// `products` (primary, standby, or "" until a broker has answered).
	Role  string `json:"role"`
	Epoch uint64 `json:"epoch"`
	// Ready: both replicas hold a complete copy, so decisions can be made.
	Ready    bool          `json:"ready"`
	Replicas []replicaBody `json:"replicas"`
}

// replicaBody is the state of one replica of a stores table.
type replicaBody struct {
	Service   string `json:"service"`
	Table     string `json:"table"`
	State     string `json:"state"`
	Ready     bool   `json:"ready"`
	Seq       uint64 `json:"seq"`
	OwnerHead uint64 `json:"owner_head"`
	Epoch     uint64 `json:"epoch"`
	LagSeqs   uint64 `json:"lag_seqs"`
	// Staleness: how long ago the replica was last known to hold the
	// owner's head; "-1ns" until it first was.
	Staleness      svc.Duration `json:"staleness"`
	StalenessSecs  float64      `json:"staleness_seconds"`
	Mode           string       `json:"mode"`
	ModeConfigured string       `json:"mode_configured"`
	ModeReason     string       `json:"mode_reason,omitempty"`
	FullTransfers  uint64       `json:"full_transfers"`
	Resumes        uint64       `json:"resumes"`
	Reconnects     uint64       `json:"reconnects"`
	Applied        uint64       `json:"applied"`
	LastError      string       `json:"last_error,omitempty"`
}

func (h *handler) status(w http.ResponseWriter, _ *http.Request) {
	role, epoch := h.s.Component().Role()
	b := statusBody{Service: products.ServiceName, Instance: h.s.Component().Config().Instance, Role: role, Epoch: epoch, Ready: true}
	for _, table := range []string{stores.TableStores, stores.TableManagers} {
		r, err := h.s.Replica(table)
		if err != nil {
			svc.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		st, ready := r.Status(), false
		select {
		case <-r.Ready():
			ready = true
		default:
			b.Ready = false
		}
		rb := replicaBody{Service: st.Service, Table: st.Table, State: st.State.String(), Ready: ready,
			Seq: st.Seq, OwnerHead: st.OwnerHead, Epoch: st.Epoch, LagSeqs: st.Lag.Seqs,
			Staleness: svc.Duration(st.Lag.Staleness), StalenessSecs: st.Lag.Staleness.Seconds(),
			Mode: st.Mode, ModeConfigured: st.ModeConfigured, ModeReason: st.ModeReason,
			FullTransfers: st.Stats.FullTransfers, Resumes: st.Stats.Resumes, Reconnects: st.Stats.Reconnects, Applied: st.Stats.Applied}
		if st.LastErr != nil {
			rb.LastError = st.LastErr.Error()
		}
		b.Replicas = append(b.Replicas, rb)
	}
	svc.WriteJSON(w, http.StatusOK, b)
}
