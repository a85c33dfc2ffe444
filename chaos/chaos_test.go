package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Environment of the chaos tests.
const (
	// envSuite selects the scenarios: unset runs the smoke scenario (part
	// of the default test suite), "short" the seeded subset of make
	// chaos-short (about two minutes), "full" everything (make chaos).
	envSuite = "REPLMESH_CHAOS"
	// envSeed overrides the base seed (every scenario's seed derives from it).
	envSeed = "REPLMESH_CHAOS_SEED"
	// envNetNS=1 adds the real-network scenarios (root, ip, nft needed).
	envNetNS = "REPLMESH_CHAOS_NETNS"
	// envReport names a file the report is written to.
	envReport = "REPLMESH_CHAOS_REPORT"
	// envOnly runs only the scenarios whose name contains it.
	envOnly = "REPLMESH_CHAOS_ONLY"
)

// buildNode builds chaosnode into a temporary directory: with the race
// detector when this test binary has it (its packages are then already
// built that way), without otherwise.
func buildNode(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the chaos suite builds its node with the go command, which is not on PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "chaosnode")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/chaosnode")
	start := time.Now()
	out, err := exec.Command(goBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, out)
	}
	t.Logf("built chaosnode (race %v) in %s", raceEnabled, time.Since(start).Round(time.Millisecond))
	return bin
}

// suite returns the scenarios to run and the level's name.
func suite(t *testing.T, base uint64) []scenario {
	seed := func(i uint64) uint64 { return base*1000 + i }
	smoke := scenario{
		name: "smoke", seed: seed(1), sp: spec{brokers: 1, owners: 2, consumers: 1},
		bulk: 100, writers: 2, pace: 20 * time.Millisecond, duration: 6 * time.Second,
		faults: []string{fKillPrimary, fKillConsumer, fReset, fPartition}, ordered: true,
	}
	short := []scenario{
		{
			name: "kills", seed: seed(11), sp: spec{brokers: 2, owners: 3, consumers: 2},
			bulk: 200, writers: 3, pace: 15 * time.Millisecond, duration: 20 * time.Second,
			faults: []string{fKillPrimary, fKillStandby, fKillConsumer, fKillBroker, fDupReorder},
		},
		{
			name: "partitions", seed: seed(12), sp: spec{brokers: 2, owners: 3, consumers: 2},
			bulk: 200, writers: 3, pace: 15 * time.Millisecond, duration: 20 * time.Second,
			faults: []string{fPartition, fReset, fIsolatePrimary, fSlowLink},
		},
		{
			name: "lease", seed: seed(15), sp: spec{brokers: 2, owners: 3, consumers: 2},
			bulk: 100, writers: 3, pace: 15 * time.Millisecond, duration: 9 * time.Second,
			// The attacker first, a second process with a live instance's
			// name (a few seconds), then the lease fault (a promotion).
			faults: []string{fAttacker, fDupInstance, fPrimaryLosesBrokers}, ordered: true,
		},
		{
			name: "transfers", seed: seed(13), sp: spec{brokers: 1, owners: 3, consumers: 2},
			bulk: 3000, writers: 2, pace: 20 * time.Millisecond, duration: 15 * time.Second,
			faults: []string{fKillConsumerTransfer, fKillPrimaryTransfer, fKillStandbyTransfer, fDupReorder},
		},
		{
			name: "disk-full", seed: seed(14), sp: spec{brokers: 1, owners: 2, consumers: 2},
			bulk: 500, writers: 2, pace: 20 * time.Millisecond, duration: 10 * time.Second,
			faults: []string{fDiskFull, fKillConsumer}, diskFull: true,
		},
	}
	full := []scenario{
		{
			name: "kills-long", seed: seed(21), sp: spec{brokers: 3, owners: 3, consumers: 3},
			bulk: 500, writers: 3, pace: 10 * time.Millisecond, duration: 35 * time.Second,
			faults: []string{fKillPrimary, fKillStandby, fKillConsumer, fKillBroker, fDupReorder},
		},
		{
			name: "partitions-long", seed: seed(22), sp: spec{brokers: 3, owners: 3, consumers: 3},
			bulk: 500, writers: 3, pace: 10 * time.Millisecond, duration: 35 * time.Second,
			faults: []string{fPartition, fReset, fIsolatePrimary, fSlowLink},
		},
		{
			name: "transfers-long", seed: seed(23), sp: spec{brokers: 2, owners: 3, consumers: 2},
			bulk: 5000, writers: 2, pace: 15 * time.Millisecond, duration: 30 * time.Second,
			faults: []string{fKillConsumerTransfer, fKillPrimaryTransfer, fKillStandbyTransfer, fSlowLink, fDupReorder},
		},
		{
			name: "retention", seed: seed(24), sp: spec{brokers: 2, owners: 3, consumers: 2, retention: 300},
			bulk: 300, writers: 3, pace: 10 * time.Millisecond, duration: 30 * time.Second,
			faults: []string{fKillConsumer, fPartition, fSlowLink, fKillPrimary},
		},
		{
			name: "lease-long", seed: seed(26), sp: spec{brokers: 3, owners: 3, consumers: 2},
			bulk: 100, writers: 3, pace: 15 * time.Millisecond, duration: 30 * time.Second,
			faults: []string{fPrimaryLosesBrokers, fKillPrimary, fAttacker},
		},
		{
			// The brokers' agreement (Raft): each fault in turn, twice.
			name: "raft", seed: seed(27), sp: spec{brokers: 3, owners: 3, consumers: 2},
			bulk: 200, writers: 3, pace: 15 * time.Millisecond, duration: 45 * time.Second,
			faults: []string{fLeaderStop, fDupInstance, fBrokerWipe, fBrokerChurn}, ordered: true,
		},
		{
			// The owner loses its disk with no standby running and is
			// restored from the most advanced consumer (restore.go);
			// kills around it.
			name: "owner-disk-loss", seed: seed(28), sp: spec{brokers: 1, owners: 2, consumers: 3, consumerListen: true},
			bulk: 500, writers: 3, pace: 15 * time.Millisecond, duration: 25 * time.Second,
			faults: []string{fOwnerDiskLoss, fKillConsumer, fOwnerDiskLoss, fKillPrimary}, ordered: true,
		},
		{
			name: "mixed", seed: seed(25), sp: spec{brokers: 3, owners: 3, consumers: 3},
			bulk: 1000, writers: 3, pace: 10 * time.Millisecond, duration: 45 * time.Second,
			faults: []string{fKillPrimary, fKillStandby, fKillConsumer, fKillBroker, fKillConsumerTransfer,
				fKillPrimaryTransfer, fKillStandbyTransfer, fPartition, fIsolatePrimary, fReset, fSlowLink, fDiskFull, fDupReorder, fAttacker},
			diskFull: true,
		},
	}
	switch os.Getenv(envSuite) {
	case "":
		return []scenario{smoke}
	case "short":
		return short
	case "full":
		return append(short, full...)
	}
	t.Fatalf("%s=%q: want short or full (or unset for the smoke scenario)", envSuite, os.Getenv(envSuite))
	return nil
}

// TestChaos runs the chaos scenarios against real processes (see the
// package comment) and reports. Unset REPLMESH_CHAOS runs one small smoke
// scenario; REPLMESH_CHAOS=short|full the larger sets.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes; skipped in -short mode")
	}
	base := uint64(1)
	if os.Getenv(envSuite) == "full" {
		base = uint64(time.Now().UnixNano()) % 1_000_000
	}
	if s := os.Getenv(envSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envSeed, s, err)
		}
		base = v
	}
	scs := suite(t, base)
	if only := os.Getenv(envOnly); only != "" {
		var keep []scenario
		for _, sc := range scs {
			if strings.Contains(sc.name, only) {
				keep = append(keep, sc)
			}
		}
		scs = keep
	}
	bin := buildNode(t)
	began := time.Now()
	var results []*result
	level := "portable"
	run := func(sc scenario, rn *realNet) {
		t.Run(sc.name, func(t *testing.T) {
			root, err := os.MkdirTemp("", "rmchaos-"+sc.name+"-")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			res := runScenario(ctx, sc, bin, root, rn, func(f string, a ...any) { t.Logf(f, a...) })
			results = append(results, res)
			if keepDir(res) {
				t.Logf("run dir kept: %s", root)
			} else {
				_ = os.RemoveAll(root)
			}
			if !res.passed() {
				t.Errorf("scenario %s (seed %d) failed:\n%s", sc.name, sc.seed, report(level, []*result{res}, res.took))
			}
		})
	}
	for _, sc := range scs {
		run(sc, nil)
	}
	if os.Getenv(envNetNS) == "1" {
		level = "portable + real-network"
		if why := runNetNS(t, base, run); why != "" {
			level = "portable; real-network level skipped: " + why
		}
	}
	rep := report(level, results, time.Since(began))
	t.Logf("\n%s", rep)
	if p := os.Getenv(envReport); p != "" {
		if err := os.WriteFile(p, []byte(rep), 0o644); err != nil {
			t.Errorf("write report: %v", err)
		}
	}
}

// netnsScenarios run at the real-network level (REPLMESH_CHAOS_NETNS=1).
func netnsScenarios(base uint64) []scenario {
	seed := func(i uint64) uint64 { return base*1000 + i }
	return []scenario{
		{
			name: "netns-partitions", seed: seed(31), sp: spec{brokers: 3, owners: 3, consumers: 2},
			bulk: 300, writers: 3, pace: 15 * time.Millisecond, duration: 30 * time.Second,
			faults: []string{fPartition, fIsolatePrimary, fPartitionBrokers, fReset, fSlowLink},
		},
		{
			// The brokers' agreement where only the real network can
			// break it: one-way partitions (UDP gossip included), a paused
			// leader, wiped brokers, a second process with a live name.
			name: "netns-raft", seed: seed(33), sp: spec{brokers: 3, owners: 3, consumers: 2},
			bulk: 200, writers: 3, pace: 15 * time.Millisecond, duration: 45 * time.Second,
			faults: []string{fBrokerOneWay, fLeaderStop, fBrokerOneWay, fDupInstance, fBrokerWipe, fBrokerOneWay, fBrokerChurn, fPartitionBrokers}, ordered: true,
		},
		{
			// The pre-Raft note's pair, alternating: a one-way partition
			// with the primary killed half the time, then a paused leader
			// with the primary killed (standby sessions then sit on the
			// paused broker as often as not).
			name: "netns-raft-pause", seed: seed(34), sp: spec{brokers: 3, owners: 3, consumers: 2},
			bulk: 200, writers: 3, pace: 15 * time.Millisecond, duration: 45 * time.Second,
			faults: []string{fBrokerOneWay, fLeaderStop}, ordered: true,
		},
		{
			name: "netns-kills", seed: seed(32), sp: spec{brokers: 2, owners: 3, consumers: 2},
			bulk: 2000, writers: 2, pace: 15 * time.Millisecond, duration: 30 * time.Second,
			faults: []string{fKillPrimary, fKillBroker, fKillConsumerTransfer, fPartitionBrokers, fPartition},
		},
	}
}

// runNetNS runs the real-network scenarios, each in namespaces of its own
// that are deleted afterwards, on failure, and on SIGINT/SIGTERM. It
// returns why the level could not run ("" when it ran).
func runNetNS(t *testing.T, base uint64, run func(scenario, *realNet)) string {
	if _, err := newRealNet(); err != nil {
		t.Logf("real-network level skipped: %v", err)
		return err.Error()
	}
	if err := removeStaleNamespaces(); err != nil {
		t.Logf("removing namespaces of earlier runs: %v", err)
	}
	for _, sc := range netnsScenarios(base) {
		if only := os.Getenv(envOnly); only != "" && !strings.Contains(sc.name, only) {
			continue
		}
		rn, err := newRealNet()
		if err != nil {
			t.Fatal(err)
		}
		stop := cleanupOnSignal(rn)
		func() {
			defer func() {
				if err := rn.cleanup(); err != nil {
					t.Errorf("clean up the namespaces of %s: %v", sc.name, err)
				}
				stop()
			}()
			run(sc, rn)
		}()
	}
	return ""
}

// cleanupOnSignal deletes rn's namespaces if the test process is
// interrupted or terminated while they exist (deferred cleanups do not run
// then), and exits.
func cleanupOnSignal(rn *realNet) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			_ = rn.cleanup()
			fmt.Fprintf(os.Stderr, "chaos: %v: namespaces removed\n", sig)
			os.Exit(2)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
