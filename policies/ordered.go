package policies

import (
	"runtime"
	"sync"
)

// ordered runs work(0), ..., work(n-1) on up to GOMAXPROCS goroutines and
// hands each result to use on the calling goroutine, strictly in order of i,
// so that whatever use does (appending problems, accounts) happens exactly as
// in a plain loop: results are deterministic however the work is scheduled.
// At most window results are computed ahead of the one use waits for, which
// bounds the memory held by finished but unused results. When use returns
// false, ordered stops handing out work and returns once the work already
// started has finished.
//
// work must be safe to run concurrently with itself; use need not be.
func ordered[T any](n, window int, work func(i int) T, use func(i int, r T) bool) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 || window < 2 {
		for i := range n {
			if !use(i, work(i)) {
				return
			}
		}
		return
	}
	// Result i goes to ring[i%window]. The feeder takes a token from sem
	// before it hands out i and use gives it back after consuming i, so
	// i and i+window are never in the ring together and a slot's ready
	// channel never holds more than one signal.
	type slot struct {
		r     T
		ready chan struct{}
	}
	ring := make([]slot, window)
	for i := range ring {
		ring[i].ready = make(chan struct{}, 1)
	}
	sem := make(chan struct{}, window)
	jobs := make(chan int)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				s := &ring[i%window]
				s.r = work(i)
				s.ready <- struct{}{}
			}
		})
	}
	go func() {
		defer close(jobs)
		for i := range n {
			select {
			case sem <- struct{}{}:
			case <-done:
				return
			}
			select {
			case jobs <- i:
			case <-done:
				return
			}
		}
	}()
	defer wg.Wait()
	defer close(done)
	var zero T
	for i := range n {
		s := &ring[i%window]
		<-s.ready
		r := s.r
		s.r = zero // let the result go once use is done with it
		<-sem
		if !use(i, r) {
			return
		}
	}
}
