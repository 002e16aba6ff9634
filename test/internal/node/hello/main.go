// Command hello is a tiny test workload for test/internal/node's nodes: it prints a greeting,
// its /proc/self/cgroup (which names the pod UID and container ID on the host's cgroup paths)
// and every file named by its arguments (cut at 4 KiB, e.g. a projected service-account
// token), then blocks until SIGINT or SIGTERM. As PID 1 of its container it must handle
// SIGTERM itself: the kernel ignores signals PID 1 has no handler for.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	host, _ := os.Hostname()
	fmt.Printf("hello from %s (pid %d)\n", host, os.Getpid())
	show("/proc/self/cgroup")
	for _, p := range os.Args[1:] {
		show(p)
	}
	fmt.Printf("got %v, exiting\n", <-sigs)
}

func show(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Printf("%s: %v\n", path, err)
		return
	}
	if len(b) > 4096 {
		b = b[:4096]
	}
	fmt.Printf("%s:\n%s\n", path, b)
}
