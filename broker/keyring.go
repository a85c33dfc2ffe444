package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/memberlist"

	"github.com/replmesh/replmesh/transport"
)

// Gossip keys. A broker started with Config.GossipKey encrypts gossip with
// that key (the primary) and decrypts with any key of its keyring
// (Config.GossipKeys and those added since). A key is rotated without a
// broker leaving the cluster, in three rounds, each done on every broker
// before the next begins:
//
//  1. AddGossipKey(new): every broker accepts the new key;
//  2. UseGossipKey(new): every broker encrypts with it (all can read it);
//  3. RemoveGossipKey(old): no broker sends with it any more.
//
// replbroker does the same from its config file on SIGHUP (SetGossipKeys),
// and replctl through the GossipKeys RPC. Config.ClusterLabel stays as it
// is throughout.

// Errors of the gossip key calls.
var (
	// ErrGossipUnencrypted: the broker started without Config.GossipKey,
	// so it has no keyring; encryption is turned on by a restart with a key
	// (every broker at once: brokers with and without a key do not talk).
	ErrGossipUnencrypted = errors.New("broker: gossip is not encrypted on this broker: it started without Config.GossipKey")
	// ErrUnknownGossipKey: the key is not in the broker's keyring.
	ErrUnknownGossipKey = errors.New("broker: gossip key not installed")
	// ErrPrimaryGossipKey: the primary key cannot be removed; make another
	// key primary first (UseGossipKey).
	ErrPrimaryGossipKey = errors.New("broker: the primary gossip key cannot be removed; make another key primary first")
)

// GossipKeyFingerprint names a gossip key without revealing it: the first 8
// bytes of its SHA-256, in hex. Logs and the GossipKeys RPC show keys this
// way only.
func GossipKeyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

func checkGossipKey(key []byte) error {
	if err := memberlist.ValidateKey(key); err != nil {
		return fmt.Errorf("is %d bytes; it must be 16, 24 or 32", len(key))
	}
	return nil
}

// keyring returns the broker's memberlist keyring, or ErrGossipUnencrypted.
func (b *Broker) keyring() (*memberlist.Keyring, error) {
	if b.del.keyring == nil {
		return nil, ErrGossipUnencrypted
	}
	return b.del.keyring, nil
}

// ListGossipKeys returns the broker's gossip keys, the primary first; nil
// when gossip is not encrypted. The keys are copies.
func (b *Broker) ListGossipKeys() [][]byte {
	kr, err := b.keyring()
	if err != nil {
		return nil
	}
	// GetKeys returns the keyring's own slice: copy it, keys and all.
	var keys [][]byte
	for _, k := range kr.GetKeys() {
		keys = append(keys, slices.Clone(k))
	}
	return keys
}

// AddGossipKey installs key for decryption; gossip stays encrypted with
// the primary key. Adding a key already installed does nothing.
func (b *Broker) AddGossipKey(key []byte) error {
	kr, err := b.keyring()
	if err != nil {
		return err
	}
	if err := checkGossipKey(key); err != nil {
		return fmt.Errorf("broker: gossip key %w", err)
	}
	if installed(kr, key) {
		return nil
	}
	if err := kr.AddKey(slices.Clone(key)); err != nil {
		return fmt.Errorf("broker: add gossip key: %w", err)
	}
	b.log.Info("gossip key added", "key", GossipKeyFingerprint(key), "keys", len(kr.GetKeys()))
	return nil
}

// UseGossipKey makes an installed key the primary: gossip is encrypted with
// it from now on. Every broker should have the key installed first.
func (b *Broker) UseGossipKey(key []byte) error {
	kr, err := b.keyring()
	if err != nil {
		return err
	}
	if !installed(kr, key) {
		return fmt.Errorf("%w: %s (add it first)", ErrUnknownGossipKey, GossipKeyFingerprint(key))
	}
	if bytes.Equal(kr.GetPrimaryKey(), key) {
		return nil
	}
	if err := kr.UseKey(key); err != nil {
		return fmt.Errorf("broker: use gossip key: %w", err)
	}
	b.log.Info("gossip key made primary", "key", GossipKeyFingerprint(key))
	return nil
}

// RemoveGossipKey uninstalls a key that is not the primary: gossip
// encrypted with it is dropped from now on.
func (b *Broker) RemoveGossipKey(key []byte) error {
	kr, err := b.keyring()
	if err != nil {
		return err
	}
	if !installed(kr, key) {
		return fmt.Errorf("%w: %s", ErrUnknownGossipKey, GossipKeyFingerprint(key))
	}
	if bytes.Equal(kr.GetPrimaryKey(), key) {
		return fmt.Errorf("%w (%s)", ErrPrimaryGossipKey, GossipKeyFingerprint(key))
	}
	if err := kr.RemoveKey(key); err != nil {
		return fmt.Errorf("broker: remove gossip key: %w", err)
	}
	b.log.Info("gossip key removed", "key", GossipKeyFingerprint(key), "keys", len(kr.GetKeys()))
	return nil
}

// SetGossipKeys makes the keyring hold exactly keys, keys[0] the primary:
// it adds the keys missing, makes keys[0] primary, then removes the keys
// not listed (the order of a rotation step). Every key is checked before
// anything changes. It reports whether anything changed.
func (b *Broker) SetGossipKeys(keys [][]byte) (changed bool, err error) {
	kr, err := b.keyring()
	if err != nil {
		return false, err
	}
	if len(keys) == 0 {
		return false, errors.New("broker: no gossip key given; gossip stays encrypted (turning it off needs a restart)")
	}
	for i, k := range keys {
		if err := checkGossipKey(k); err != nil {
			return false, fmt.Errorf("broker: gossip key [%d] %w", i, err)
		}
	}
	before := kr.GetKeys()
	for _, k := range keys {
		if err := b.AddGossipKey(k); err != nil {
			return false, err
		}
	}
	if err := b.UseGossipKey(keys[0]); err != nil {
		return false, err
	}
	for _, k := range kr.GetKeys() {
		if !slices.ContainsFunc(keys, func(w []byte) bool { return bytes.Equal(w, k) }) {
			if err := b.RemoveGossipKey(k); err != nil {
				return false, err
			}
		}
	}
	after := kr.GetKeys()
	return !slices.EqualFunc(before, after, bytes.Equal), nil
}

func installed(kr *memberlist.Keyring, key []byte) bool {
	return slices.ContainsFunc(kr.GetKeys(), func(k []byte) bool { return bytes.Equal(k, key) })
}

// GossipKeys serves the GossipKeys RPC (replctl gossip keys): it lists the
// broker's keys by fingerprint, or adds, uses or removes one, and answers
// with the keys in force after the change.
//
// Access: with certificate identities (Config.RequireIdentity) the caller
// must be an admin. Otherwise it must present Config.Token, which must be
// set: without identities or a token the RPC is refused, since whoever can
// add and use a key can read and join the cluster.
func (b *Broker) GossipKeys(ctx context.Context, req *transport.GossipKeysRequest) (*transport.GossipKeysResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	switch {
	case b.cfg.RequireIdentity:
		// With certificate identities, an admin manages the keys.
		if err := b.authorize(ctx, "gossipkeys", transport.RoleAdmin); err != nil {
			return nil, err
		}
	case b.cfg.Token == "":
		return nil, fmt.Errorf("%w: gossip keys are managed remotely only on a broker with certificate identities (Config.RequireIdentity) or a token (Config.Token)", transport.ErrPermission)
	case subtle.ConstantTimeCompare([]byte(req.Token), []byte(b.cfg.Token)) != 1:
		return nil, fmt.Errorf("%w: bad or missing token for gossip keys", transport.ErrPermission)
	}
	var err error
	switch req.Op {
	case transport.GossipKeysList:
		if _, err = b.keyring(); err != nil {
			err = fmt.Errorf("%w: %v", transport.ErrBadRequest, err)
		}
	case transport.GossipKeysAdd:
		err = b.AddGossipKey(req.Key)
	case transport.GossipKeysUse:
		err = b.UseGossipKey(req.Key)
	case transport.GossipKeysRemove:
		err = b.RemoveGossipKey(req.Key)
	default:
		return nil, badRequest("gossip keys operation %q: want %s, %s, %s or %s", req.Op,
			transport.GossipKeysList, transport.GossipKeysAdd, transport.GossipKeysUse, transport.GossipKeysRemove)
	}
	if err != nil {
		if !errors.Is(err, transport.ErrBadRequest) {
			err = fmt.Errorf("%w: %v", transport.ErrBadRequest, err)
		}
		return nil, err
	}
	resp := &transport.GossipKeysResponse{Broker: b.cfg.Name}
	for i, k := range b.ListGossipKeys() {
		resp.Keys = append(resp.Keys, transport.GossipKeyInfo{Fingerprint: GossipKeyFingerprint(k), Primary: i == 0})
	}
	return resp, nil
}
