package benchkit

// AppendKey appends the key of row i: "k" and nine digits, so keys sort
// by i (and are valid as a NATS subject token and a Redis key).
func AppendKey(dst []byte, i int) []byte {
	var d [10]byte
	d[0] = 'k'
	for j := 9; j >= 1; j-- {
		d[j] = byte('0' + i%10)
		i /= 10
	}
	return append(dst, d[:]...)
}
