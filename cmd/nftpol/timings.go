package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

// timingsEnv, set to 1, makes nftpol print how long after its start each
// phase of its work ended, on stderr: where a slow apply spends its time
// (policy, state, kernel), without a profiler. Benchmarks use it too.
const timingsEnv = "NFTPOL_TIMINGS"

var (
	started               = time.Now()
	timingsOut  io.Writer = os.Stderr
	showTimings           = os.Getenv(timingsEnv) == "1"
)

// phase notes, when timings are on, that the phase called name ended.
func phase(name string) {
	if showTimings {
		fmt.Fprintf(timingsOut, "nftpol: %8.1f ms  %s\n", float64(time.Since(started).Microseconds())/1000, name)
	}
}
