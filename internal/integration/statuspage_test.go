package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/browsertest"
	"github.com/replmesh/replmesh/internal/faultproxy"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// The broker's status page in a real browser, with real components: an
// owner with a table of 4,000 rows of 1 KiB and a consumer whose full
// transfer is held still half-way (a proxy between the two, paused after
// some bytes). The page shows the service, the subscription's configured
// and running mode, its lag and the transfer's progress; once the proxy
// lets the rest through it shows the subscription streaming and following
// new writes, without reloading.
func TestStatusPage_BrowserWithRealComponents(t *testing.T) {
	br := browsertest.Start(t)
	b := startBrokers(t, 1)[0]

	// Peers wait a minute for each other, so that the pause (a few
	// seconds, more on a loaded machine) neither restarts the transfer
	// nor makes the owner give up counting its rows.
	patient := func(c *replica.Config) { c.PeerTimeout = time.Minute }
	owner := component(t, "stores", "s1", "", "", grpcAddrs(b), true, patient)
	defer owner.Close()
	tbl, err := owner.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "owner is primary", func() bool { role, _ := owner.Role(); return role == "primary" })
	const rows, valueSize = 4000, 1024
	value := []byte(strings.Repeat("v", valueSize))
	for i := 0; i < rows; i += 500 {
		ws := make([]replica.Write, 0, 500)
		for j := i; j < i+500; j++ {
			ws = append(ws, replica.Write{Key: fmt.Appendf(nil, "k%05d", j), Value: value})
		}
		if _, err := tbl.Apply(ctxT(t, 30*time.Second), ws...); err != nil {
			t.Fatal(err)
		}
	}

	// The consumer reaches the owner through a proxy that delivers 512
	// KB/s (so it can be paused after a known number of bytes, far from
	// the table's 4 MB) and registers with the broker as usual.
	px, err := faultproxy.New(owner.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	px.SetBandwidth(512 << 10)

	br.Open(serveStatusPage(t, b) + "/")
	page := &statusPage{br}
	page.WaitFor("the owner service with its primary and head", `(function() {
		const tr = document.querySelector("#services tr");
		return tr && tr.querySelector(".service")?.textContent === "stores" &&
			tr.querySelector(".primary").textContent.startsWith("s1 ") &&
			Number(tr.querySelector(".epoch").textContent) >= 1 &&
			tr.querySelector(".tables").textContent.includes("managers 4,000");
	})()`)
	page.WaitFor("no subscription yet", `document.querySelector("#subscriptions").textContent === "no subscription"`)

	cons := component(t, "products", "p1", "", "", grpcAddrs(b), false, patient)
	defer cons.Close()
	r, err := cons.Subscribe(ctxT(t, 10*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers",
		Addr: px.Addr(), Modes: &modes.TableConfig{Mode: modes.Auto}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "256 KiB of the transfer through the proxy", func() bool {
		_, down := px.Bytes()
		return down >= 256<<10
	})
	px.Pause()
	t.Logf("proxy paused after %d bytes to the consumer", func() int64 { _, d := px.Bytes(); return d }())

	// The broker hears of the transfer, held still: rows arrived, fewer
	// than all. The page must show what the broker says.
	var sub transport.SubInfo
	waitUntil(t, time.Minute, "the broker reporting the held transfer", func() bool {
		s, ok := brokerSub(t, b, "products", "p1", "stores", "managers")
		sub = s
		return ok && s.State == "transferring" && s.XferRows > 0 && s.Running != ""
	})
	if sub.Seq != 0 {
		t.Fatalf("a transfer held half-way applied seq %d: %+v", sub.Seq, sub)
	}
	if sub.XferExpected != rows {
		t.Fatalf("the owner announced %d rows, want %d (%+v)", sub.XferExpected, rows, sub)
	}
	row := `products/p1`
	page.WaitFor("the running mode beside the configured one", page.cell(row, "mode")+` === "auto → `+sub.Running+`"`)
	page.WaitFor("the lag of a transfer held half-way", page.cell(row, "seq")+` === "0" && `+page.cell(row, "head")+
		` === "4,000" && `+page.cell(row, "behind")+` === "4,000" && `+page.cell(row, "state")+` === "transferring"`)
	// The progress: rows received of the 4,000 announced, the percent
	// they make, a rate and an ETA. The row count settles once the bytes
	// already past the proxy are in; the page and the broker then agree.
	page.WaitFor("the transfer's progress", `(function() {
		const rows = Number(`+page.cell(row, "xfer-rows")+`.replaceAll(",", ""));
		return rows > 0 && rows < 4000 && `+page.cell(row, "xfer-expected")+` === "4,000" &&
			`+page.cell(row, "xfer-pct")+` === (100 * rows / 4000).toFixed(1) + "%" &&
			`+page.cell(row, "xfer-rate")+`.endsWith(" rows/s") && `+page.cell(row, "xfer-eta")+`.startsWith("ETA ") &&
			document.querySelector("#subscriptions [role=progressbar]")?.getAttribute("aria-valuenow") === (100 * rows / 4000).toFixed(1);
	})()`)
	waitUntil(t, time.Minute, "the page and the broker agreeing on the held transfer's rows", func() bool {
		s, _ := brokerSub(t, b, "products", "p1", "stores", "managers")
		sub = s
		return s.State == "transferring" && page.Text(page.cell(row, "xfer-rows")) == group(s.XferRows)
	})
	if sub.XferRows >= rows {
		t.Fatalf("the transfer was not held: %+v", sub)
	}
	t.Logf("held transfer on the page: %s", page.Text(page.cell(row, "xfer")))
	updatesHeld := page.updates()

	// The rest goes through: the page follows the transfer's end, then
	// new writes, in place.
	px.SetBandwidth(0)
	px.Resume()
	page.WaitFor("the transfer's end", page.cell(row, "state")+` === "streaming" && `+page.cell(row, "xfer")+` === "" && `+
		page.cell(row, "seq")+` === "4,000" && `+page.cell(row, "behind")+` === "0"`)
	put(t, tbl, 10, "after")
	converge(t, tbl, r)
	page.WaitFor("the new writes applied", page.cell(row, "seq")+` === "4,010" && `+page.cell(row, "head")+` === "4,010"`)

	if br.Reloaded() {
		t.Fatal("the page reloaded; it must update in place")
	}
	if n := page.updates(); n <= updatesHeld {
		t.Fatalf("the page's update count went from %d to %d", updatesHeld, n)
	}
	br.Check()
}

// serveStatusPage serves b's status page on 127.0.0.1 and returns its URL.
func serveStatusPage(t testing.TB, b *broker.Broker) string {
	return browsertest.Serve(t, b.StatusHandler())
}

// brokerSub returns a subscription as the broker reports it.
func brokerSub(t testing.TB, b *broker.Broker, service, instance, owner, table string) (transport.SubInfo, bool) {
	t.Helper()
	st, err := b.Status(ctxT(t, 10*time.Second), &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range st.Instances {
		if in.Service != service || in.Instance != instance {
			continue
		}
		for _, s := range in.Subscriptions {
			if s.Service == owner && s.Table == table {
				return s, true
			}
		}
	}
	return transport.SubInfo{}, false
}

// group writes n as the page does: digits grouped by commas.
func group(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// statusPage is the status page loaded in a browser tab, with the
// expressions that read it.
type statusPage struct{ *browsertest.Browser }

// updates is how many times the page has redrawn from api/status.
func (p *statusPage) updates() int {
	n, _ := strconv.Atoi(p.Text(`document.body.dataset.updates ?? "0"`))
	return n
}

// cell is an expression for the text of the element of class cls in the
// subscription row of consumer ("service/instance"), "" when there is none.
func (p *statusPage) cell(consumer, cls string) string {
	return fmt.Sprintf(`([...document.querySelectorAll("#subscriptions tr")].find(tr => tr.querySelector(".consumer")?.textContent === %q)`+
		`?.querySelector(%q)?.textContent ?? "")`, consumer, "."+cls)
}
