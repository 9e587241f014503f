package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoCgroup is wrapped by MemoryCgroup's errors when this process cannot
// make a memory cgroup (no memory controller, or not allowed: it needs root
// or a delegated cgroup).
var ErrNoCgroup = errors.New("cannot make a memory cgroup here")

// MemoryCgroup creates a memory cgroup below this process's, named for
// name and this process, with a memory limit of limit bytes: cgroup v1
// (memory.limit_in_bytes) or v2 (memory.max). It returns the cgroup's
// cgroup.procs and a function that removes it once its processes ended.
func MemoryCgroup(name string, limit int64) (procs string, remove func() error, err error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	var dir, limitFile string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case strings.Contains(","+parts[1]+",", ",memory,"):
			dir, limitFile = filepath.Join("/sys/fs/cgroup/memory", parts[2]), "memory.limit_in_bytes"
		case parts[0] == "0" && parts[1] == "" && dir == "":
			dir, limitFile = filepath.Join("/sys/fs/cgroup", parts[2]), "memory.max"
		}
	}
	if dir == "" {
		return "", nil, fmt.Errorf("%w: this process is in no memory cgroup", ErrNoCgroup)
	}
	child := filepath.Join(dir, fmt.Sprintf("%s-%d", name, os.Getpid()))
	if err := os.Mkdir(child, 0o755); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	remove = func() error { return os.Remove(child) }
	if err := os.WriteFile(filepath.Join(child, limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		_ = remove()
		return "", nil, fmt.Errorf("%w: setting %s (cgroup v2 needs the memory controller delegated): %v", ErrNoCgroup, limitFile, err)
	}
	return filepath.Join(child, "cgroup.procs"), remove, nil
}

// InCgroup makes cmd join the cgroup whose cgroup.procs is procs before it
// runs its first instruction: a shell joins, then execs the command.
func InCgroup(cmd *exec.Cmd, procs string) {
	cmd.Args = append([]string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, procs, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = "/bin/sh"
}
