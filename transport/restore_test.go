package transport

import (
	"errors"
	"strings"
	"testing"
)

func sampleRestoreRequests() []*RestoreRequest {
	return []*RestoreRequest{
		{Version: ProtocolVersion, Table: "store_managers"},
		{Version: ProtocolVersion, Table: "t", Source: RestoreSource{Service: "products", Instance: "p1", Addr: "127.0.0.1:7000"}, LogID: "00aa", DryRun: true},
		{Version: ProtocolVersion, Table: "t", Candidates: []RestoreSource{{Addr: "127.0.0.1:1"}, {Service: "s", Addr: "127.0.0.1:2"}}},
	}
}

func sampleRestoreStatuses() []*RestoreStatus {
	return []*RestoreStatus{
		{Phase: RestorePhasePlan, Table: "t", Positions: []ReplicaPosition{{Source: RestoreSource{Addr: "a"}, LogID: "l", Epoch: 3, Seq: 9, State: "streaming"}, {Source: RestoreSource{Addr: "b"}, Err: "unavailable"}},
			Source: RestoreSource{Addr: "a"}, ExpectedLogID: "l", OwnerLogID: "m", OwnerEpoch: 4},
		{Phase: RestorePhaseTransfer, Table: "t", Rows: 10, Expected: 100, Bytes: 1000, Rate: 12.5, EtaMs: 7000, ElapsedMs: 800},
		{Phase: RestorePhaseDone, Table: "t", LogID: "l", Epoch: 3, Seq: 9, NewEpoch: 6},
	}
}

func FuzzDecodePositionRequest(f *testing.F) {
	fuzzDecode(f, []*PositionRequest{{Version: ProtocolVersion, Service: "stores", Table: "store_managers"}})
}

func FuzzDecodePositionResponse(f *testing.F) {
	fuzzDecode(f, []*PositionResponse{{Service: "products", Instance: "p1", LogID: "ab", Epoch: 2, Seq: 99, State: "diverged"}})
}

func FuzzDecodeSourceRequest(f *testing.F) {
	fuzzDecode(f, []*SourceRequest{{Version: ProtocolVersion, Service: "stores", Instance: "s1", Table: "t", LogID: "ab"}})
}

func FuzzDecodeRestoreRequest(f *testing.F) { fuzzDecode(f, sampleRestoreRequests()) }

func FuzzDecodeRestoreStatus(f *testing.F) { fuzzDecode(f, sampleRestoreStatuses()) }

func TestRestoreMessages_RoundTrip(t *testing.T) {
	for i, in := range sampleRestoreRequests() {
		b, err := Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var out RestoreRequest
		if err := Unmarshal(b, &out); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if out.Table != in.Table || out.Source != in.Source || out.LogID != in.LogID || out.DryRun != in.DryRun || len(out.Candidates) != len(in.Candidates) {
			t.Fatalf("request %d: got %+v, want %+v", i, out, *in)
		}
	}
}

func TestRestoreMessages_Validate(t *testing.T) {
	many := make([]RestoreSource, MaxRestoreCandidates+1)
	for i := range many {
		many[i].Addr = "127.0.0.1:1"
	}
	tests := []struct {
		name string
		v    interface{ Validate() error }
		want error  // nil: valid
		msg  string // part of the error
	}{
		{"restore ok", &RestoreRequest{Version: ProtocolVersion, Table: "t"}, nil, ""},
		{"restore version", &RestoreRequest{Version: 99, Table: "t"}, ErrProtocolVersion, ""},
		{"restore no table", &RestoreRequest{Version: ProtocolVersion}, ErrBadRequest, "restore: "},
		{"restore source without address", &RestoreRequest{Version: ProtocolVersion, Table: "t", Source: RestoreSource{Service: "p"}}, ErrBadRequest, "empty address"},
		{"restore bad source service", &RestoreRequest{Version: ProtocolVersion, Table: "t", Source: RestoreSource{Service: "a/b", Addr: "x:1"}}, ErrBadRequest, "service"},
		{"restore too many candidates", &RestoreRequest{Version: ProtocolVersion, Table: "t", Candidates: many}, ErrTooLarge, "candidates"},
		{"restore bad candidate", &RestoreRequest{Version: ProtocolVersion, Table: "t", Candidates: []RestoreSource{{Instance: "i"}}}, ErrBadRequest, "candidate 0"},
		{"position ok", &PositionRequest{Version: ProtocolVersion, Service: "s", Table: "t"}, nil, ""},
		{"position no service", &PositionRequest{Version: ProtocolVersion, Table: "t"}, ErrBadRequest, "service"},
		{"position bad table", &PositionRequest{Version: ProtocolVersion, Service: "s", Table: "a/b"}, ErrBadRequest, "position: "},
		{"position version", &PositionRequest{Service: "s", Table: "t"}, ErrProtocolVersion, ""},
		{"source ok", &SourceRequest{Version: ProtocolVersion, Service: "s", Instance: "i", Table: "t"}, nil, ""},
		{"source no instance", &SourceRequest{Version: ProtocolVersion, Service: "s", Table: "t"}, ErrBadRequest, "instance"},
		{"source no table", &SourceRequest{Version: ProtocolVersion, Service: "s", Instance: "i"}, ErrBadRequest, "source: "},
		{"source version", &SourceRequest{Service: "s", Instance: "i", Table: "t"}, ErrProtocolVersion, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Validate() = %v, want %v mentioning %q", err, tt.want, tt.msg)
			}
		})
	}
}
