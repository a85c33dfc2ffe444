//go:build !rmreader

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// NATS's side: nats-server embedded in this process with JetStream on
// file storage in the scratch dir; one KV bucket (history 1) is the table;
// the writer publishes to the bucket's subjects asynchronously (what
// KeyValue.Put does, without waiting for each ack); each reader is a
// connection of its own (a process of its own for W2 and W3) reading a KV
// watch, the documented way to follow a bucket.
const natsBucket = "peers"

// natsServer is one embedded server with the bucket made and the
// writer's connection to it.
type natsServer struct {
	srv *server.Server
	dir string
	w   *natsClient
	kv  jetstream.KeyValue
}

func (b *bench) startNATS(ctx context.Context, name string) (_ *natsServer, err error) {
	dir, err := b.subdir(name)
	if err != nil {
		return nil, err
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	n := &natsServer{srv: s, dir: dir}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		return nil, fmt.Errorf("nats server not ready")
	}
	if n.w, err = natsConnect(n.url(), b.sz.Window); err != nil {
		return nil, err
	}
	if n.kv, err = n.w.bucket(ctx, true); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *natsServer) url() string { return n.srv.ClientURL() }

func (n *natsServer) close() error {
	if n.w != nil {
		n.w.nc.Close()
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	return os.RemoveAll(n.dir)
}

// natsClient is one connection and its JetStream context; failed async
// publishes are counted.
type natsClient struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	pubErrs atomic.Int64
	lastErr atomic.Value
}

func natsConnect(url string, window int) (*natsClient, error) {
	nc, err := nats.Connect(url, nats.Name("peers"))
	if err != nil {
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	c := &natsClient{nc: nc}
	c.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			c.pubErrs.Add(1)
			c.lastErr.Store(err)
		}))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return c, nil
}

func (c *natsClient) bucket(ctx context.Context, create bool) (jetstream.KeyValue, error) {
	if create {
		kv, err := c.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: natsBucket, Storage: jetstream.FileStorage, History: 1})
		if err != nil {
			return nil, fmt.Errorf("create bucket: %w", err)
		}
		return kv, nil
	}
	kv, err := c.js.KeyValue(ctx, natsBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket: %w", err)
	}
	return kv, nil
}

// write publishes n changes (ordinals first..) to the bucket, window in
// flight, and waits for every ack; it returns the stream's last sequence
// (the bucket's revision).
func (c *natsClient) write(ctx context.Context, kv jetstream.KeyValue, first, n, keys, size int) (uint64, error) {
	subj := "$KV." + natsBucket + "."
	for i := first; i < first+n; i++ {
		if _, err := c.js.PublishAsync(subj+key(i%keys), newValue(size, i), jetstream.WithStallWait(time.Minute)); err != nil {
			return 0, fmt.Errorf("publish: %w", err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	select {
	case <-c.js.PublishAsyncComplete():
	case <-wctx.Done():
		return 0, fmt.Errorf("acks: %w", wctx.Err())
	}
	if n := c.pubErrs.Load(); n > 0 {
		return 0, fmt.Errorf("%d publishes failed, the last: %v", n, c.lastErr.Load())
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq, nil
}

func (b *bench) natsFanout(ctx context.Context) error {
	return b.perReaders(func(n int) error { return b.natsFanoutOne(ctx, n) })
}

func (b *bench) natsFanoutOne(ctx context.Context, n int) (err error) {
	b.progress("W1 nats: %d changes to %d reader(s)", b.sz.Changes, n)
	s, err := b.startNATS(ctx, fmt.Sprintf("nats-w1-%d", n))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	w, kv := s.w, s.kv
	probes := make([]*probe, n)
	for i := range n {
		r, err := natsConnect(s.url(), b.sz.Window)
		if err != nil {
			return err
		}
		defer r.nc.Close()
		rkv, err := r.bucket(ctx, false)
		if err != nil {
			return err
		}
		watch, err := rkv.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		defer watch.Stop()
		p := newProbe(b.sz.Changes)
		probes[i] = p
		go func() {
			for e := range watch.Updates() {
				if e != nil {
					p.see(time.Now(), e.Value())
				}
			}
		}()
	}
	start := time.Now()
	if _, err := w.write(ctx, kv, 0, b.sz.Changes, b.sz.Keys, b.sz.Value); err != nil {
		return err
	}
	parts, err := waitProbes(ctx, probes)
	if err != nil {
		return err
	}
	return b.addFanout(sysNATS, n, start, time.Now(), parts)
}

// natsBigTable loads the W2/W4 bucket, has a new reader process read all
// of it (W2) and then times KV Gets (W4).
func (b *bench) natsBigTable(ctx context.Context) (err error) {
	s, err := b.startNATS(ctx, "nats-big")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	w, kv := s.w, s.kv
	b.progress("W2 nats: loading %d rows", b.sz.Rows)
	if _, err := w.write(ctx, kv, 0, b.sz.Rows, b.sz.Rows, b.sz.Value); err != nil {
		return err
	}
	if b.does("w2") {
		b.settleQuiet(ctx, "W2 "+sysNATS)
		b.progress("W2 nats: a new reader process watches the whole bucket")
		res, err := b.runReader(ctx, "nats-w2", roleNATSReader, envAddr+"="+s.url(), envRows+"="+strconv.Itoa(b.sz.Rows))
		if err != nil {
			return err
		}
		b.addTransfer(sysNATS, float64(res.Rows)/res.Seconds, res.PeakRSS, "KV WatchAll to its end-of-initial-values marker, into a Go map")
	}
	if b.does("w4") {
		// Not settleQuiet: see the comment of quietWait.
		benchkit.Settle()
		b.progress("W4 nats: %d KV Gets", b.sz.Reads)
		keys := b.readKeys()
		lat, err := timeReads(keys, func(i int) ([]byte, bool, error) {
			e, err := kv.Get(ctx, keys[i])
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil, false, nil
			}
			if err != nil {
				return nil, false, err
			}
			return e.Value(), true, nil
		})
		if err != nil {
			return fmt.Errorf("kv get: %w", err)
		}
		b.addReads(caseRead, sysNATS, lat)
	}
	return nil
}

// natsCatchUp is W3 for NATS: a reader process that followed the bucket
// to revision R stops; the missed changes are written; a new reader
// process resumes its watch after R (ResumeFromRevision) until it holds
// the head.
func (b *bench) natsCatchUp(ctx context.Context) (err error) {
	s, err := b.startNATS(ctx, "nats-w3")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	w, kv := s.w, s.kv
	head, err := w.write(ctx, kv, 0, b.sz.Keys, b.sz.Keys, b.sz.Value)
	if err != nil {
		return err
	}
	urlEnv := envAddr + "=" + s.url()
	res, err := b.runReader(ctx, "nats-w3", roleNATSReader, urlEnv, envTarget+"="+strconv.FormatUint(head, 10))
	if err != nil {
		return err
	}
	b.progress("W3 nats: %d missed changes, reader restarted", b.sz.Missed)
	head, err = w.write(ctx, kv, b.sz.Keys, b.sz.Missed, b.w3Keys(), b.sz.Value)
	if err != nil {
		return err
	}
	benchkit.Settle()
	start := time.Now()
	res, err = b.runReader(ctx, "nats-w3", roleNATSReader, urlEnv, envTarget+"="+strconv.FormatUint(head, 10), envResume+"="+strconv.FormatUint(res.Seq, 10))
	if err != nil {
		return err
	}
	b.addCatchUp(caseReaderRestart, sysNATS, res.at.Sub(start), "process start to caught up: KV watch resumed after the last revision seen")
	return nil
}

// natsReaderMain is a NATS reader process: it watches the bucket at
// envAddr (from the revision after envResume, or all of it) into a map
// until it holds revision envTarget (or, with no target, until the
// watch's initial values end).
func natsReaderMain(ctx context.Context) error {
	target, err := envInt(envTarget)
	if err != nil {
		return err
	}
	resume, err := envInt(envResume)
	if err != nil {
		return err
	}
	wantRows, err := envInt(envRows)
	if err != nil {
		return err
	}
	start := time.Now()
	c, err := natsConnect(os.Getenv(envAddr), 1)
	if err != nil {
		return err
	}
	defer c.nc.Close()
	kv, err := c.bucket(ctx, false)
	if err != nil {
		return err
	}
	var opts []jetstream.WatchOpt
	if resume > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(resume+1))
	}
	wctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	watch, err := kv.WatchAll(wctx, opts...)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer watch.Stop()
	rows := map[string][]byte{}
	var rev uint64
	for done := false; !done; {
		select {
		case e, ok := <-watch.Updates():
			if !ok {
				return fmt.Errorf("watch ended at revision %d", rev)
			}
			if e == nil {
				done = target == 0
				continue
			}
			rows[e.Key()] = e.Value()
			rev = e.Revision()
			done = target != 0 && rev >= target
		case <-wctx.Done():
			return fmt.Errorf("at revision %d of %d: %w", rev, target, wctx.Err())
		}
	}
	took := time.Since(start)
	if wantRows != 0 && uint64(len(rows)) != wantRows {
		return fmt.Errorf("read %d rows, want %d", len(rows), wantRows)
	}
	return writeResult(os.Stdout, childResult{Rows: uint64(len(rows)), Seq: rev, Seconds: took.Seconds()})
}
