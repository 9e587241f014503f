package harness

import "syscall"

// Kill ends the process with SIGKILL, as a crash would, and waits for it
// to exit.
func (s *Server) Kill() {
	s.t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}
