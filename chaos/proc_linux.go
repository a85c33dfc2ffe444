package chaos

import "syscall"

// procAttr makes a node process die with the harness (the thread that
// started it, in fact; stdin reaching EOF is the backstop: a node exits
// when the harness's end of its stdin closes).
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
