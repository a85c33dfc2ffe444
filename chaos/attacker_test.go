package chaos

import (
	"strings"
	"testing"
)

// The attacker fault fails its scenario on any attack that succeeded: a
// peer that took a call, or a broker that showed an effect of the packets.
func TestJudgeAttacks(t *testing.T) {
	refused := AttackResult{Name: AttackStatus, Target: "b1", Refused: true, Detail: "permission denied"}
	taken := AttackResult{Name: AttackRegisterHijack, Target: "b1", Detail: "accepted"}
	packet := AttackResult{Name: AttackForgedGossip, Target: "g1", Sent: true}
	skipped := AttackResult{Name: AttackAckAboveHead, Target: "o1", Skipped: true}
	tests := []struct {
		name                        string
		attacks                     []AttackResult
		bad                         []string
		refused, succeeded, skipped int
		finding                     string
	}{
		{"all refused", []AttackResult{refused, packet, skipped}, nil, 2, 0, 1, ""},
		{"a call taken", []AttackResult{refused, taken}, nil, 1, 1, 0, "attack register-hijack on b1 succeeded: accepted"},
		{"a packet took effect", []AttackResult{refused, packet, packet}, []string{`broker b1 names "mallory" primary, which is no owner`}, 1, 2, 0, "attack by gossip packet: broker b1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, findings := judgeAttacks(AttackReport{Attacks: tc.attacks}, tc.bad)
			if st.refused != tc.refused || st.succeeded != tc.succeeded || st.skipped != tc.skipped {
				t.Errorf("got %d refused, %d succeeded, %d skipped; want %d, %d, %d", st.refused, st.succeeded, st.skipped, tc.refused, tc.succeeded, tc.skipped)
			}
			if got := strings.Join(findings, "\n"); tc.finding == "" && got != "" || !strings.Contains(got, tc.finding) {
				t.Errorf("findings %q, want one containing %q", got, tc.finding)
			}
		})
	}
}
