package transport

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"sort"
	"testing"
)

func sampleKeysRequests() []sample[KeysRequest] {
	return []sample[KeysRequest]{
		{"whole-table", KeysRequest{Version: ProtocolVersion, Table: "products"}},
		{"prefix-page", KeysRequest{Version: ProtocolVersion, Table: "products", Prefix: []byte("s1/"), After: []byte("s1/alice"),
			Limit: 500, Service: "replctl"}},
		{"binary", KeysRequest{Version: ProtocolVersion, Table: "t", Prefix: []byte{0, 0xff}, Limit: MaxKeysPage + 1}},
	}
}

func sampleKeysResponses() []sample[KeysResponse] {
	return []sample[KeysResponse]{
		{"page", KeysResponse{LogID: "log-0001", Seq: 50, Keys: [][]byte{[]byte("a"), []byte("b"), {0, 0xff}}, More: true}},
		{"last-page", KeysResponse{LogID: "log-0001", Seq: 51, Keys: [][]byte{[]byte("z")}}},
		{"nil-keys", KeysResponse{LogID: "log-0001", Seq: 1}},
		{"empty-keys", KeysResponse{Keys: [][]byte{}}},
	}
}

func TestKeysRequest_RoundTrip(t *testing.T)  { testRoundTrip(t, sampleKeysRequests()) }
func TestKeysResponse_RoundTrip(t *testing.T) { testRoundTrip(t, sampleKeysResponses()) }

func FuzzDecodeKeysRequest(f *testing.F)  { fuzzDecode(f, samplePtrs(sampleKeysRequests())) }
func FuzzDecodeKeysResponse(f *testing.F) { fuzzDecode(f, samplePtrs(sampleKeysResponses())) }

func TestKeysRequest_Validate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		req       KeysRequest
		wantLimit int
		wantErr   error
	}{
		{"default limit", KeysRequest{Version: ProtocolVersion, Table: "t"}, DefaultKeysPage, nil},
		{"limit kept", KeysRequest{Version: ProtocolVersion, Table: "t", Limit: 7}, 7, nil},
		{"limit capped", KeysRequest{Version: ProtocolVersion, Table: "t", Limit: MaxKeysPage + 1}, MaxKeysPage, nil},
		{"no table", KeysRequest{Version: ProtocolVersion}, 0, ErrBadRequest},
		{"bad version", KeysRequest{Version: ProtocolVersion + 1, Table: "t"}, 0, ErrProtocolVersion},
		{"prefix too long", KeysRequest{Version: ProtocolVersion, Table: "t", Prefix: make([]byte, MaxKeySize+1)}, 0, ErrTooLarge},
		{"start too long", KeysRequest{Version: ProtocolVersion, Table: "t", After: make([]byte, MaxKeySize+1)}, 0, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.req.Validate()
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("Validate() error %v, want %v", err, tc.wantErr)
			}
			if err == nil && got != tc.wantLimit {
				t.Errorf("Validate() limit %d, want %d", got, tc.wantLimit)
			}
		})
	}
}

// keysReplication is a fakeReplication that also lists keys, from a sorted
// in-memory table.
type keysReplication struct {
	fakeReplication
	keys [][]byte
}

func (f *keysReplication) Keys(_ context.Context, in *KeysRequest) (*KeysResponse, error) {
	limit, err := in.Validate()
	if err != nil {
		return nil, err
	}
	if in.Table != "products" {
		return nil, ErrUnknownTable
	}
	out := &KeysResponse{LogID: "log-1", Seq: 7, Keys: [][]byte{}}
	for _, k := range f.keys {
		if !bytes.HasPrefix(k, in.Prefix) || bytes.Compare(k, in.After) <= 0 {
			continue
		}
		if len(out.Keys) == limit {
			out.More = true
			break
		}
		out.Keys = append(out.Keys, k)
	}
	return out, nil
}

// Keys travels through the service descriptor: pages in order, errors as
// sentinels, and a server without Keys answers ErrUnimplemented.
func TestReplication_Keys(t *testing.T) {
	keys := [][]byte{[]byte("a1"), []byte("a2"), []byte("a3"), []byte("b1"), {0xff}}
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	client, _ := dial(t, startServer(t, Options{}, &keysReplication{keys: keys}), Options{})
	old, _ := dial(t, startServer(t, Options{}, &fakeReplication{}), Options{})
	ctx := testContext(t)

	for _, tc := range []struct {
		name     string
		client   *ReplicationClient
		req      KeysRequest
		want     *KeysResponse
		wantErr  error
		wantPage bool
	}{
		{name: "first page", client: client, req: KeysRequest{Table: "products", Prefix: []byte("a"), Limit: 2},
			want: &KeysResponse{LogID: "log-1", Seq: 7, Keys: [][]byte{[]byte("a1"), []byte("a2")}, More: true}},
		{name: "next page", client: client, req: KeysRequest{Table: "products", Prefix: []byte("a"), After: []byte("a2"), Limit: 2},
			want: &KeysResponse{LogID: "log-1", Seq: 7, Keys: [][]byte{[]byte("a3")}}},
		{name: "whole table", client: client, req: KeysRequest{Table: "products"},
			want: &KeysResponse{LogID: "log-1", Seq: 7, Keys: keys}},
		{name: "unknown table", client: client, req: KeysRequest{Table: "nope"}, wantErr: ErrUnknownTable},
		{name: "older server", client: old, req: KeysRequest{Table: "products"}, wantErr: ErrUnimplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Version = ProtocolVersion
			got, err := tc.client.Keys(ctx, &tc.req)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("Keys = %v, want %v", err, tc.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Keys:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
