//go:build !linux

package chaos

import "syscall"

// procAttr: a node exits when its stdin reaches EOF (the harness is gone).
func procAttr() *syscall.SysProcAttr { return nil }
