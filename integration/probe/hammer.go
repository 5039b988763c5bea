package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A target is one port of the server: a protocol, a port, and what a
// connection to it must give (ok, or blocked: refused, timeout or reset).
type target struct {
	proto  string
	port   int
	expect string // "ok" or "blocked"; empty for listen -sockets
}

func (tg target) String() string { return tg.proto + ":" + strconv.Itoa(tg.port) }

// parseTargets reads PROTO:PORT[:EXPECT],... (EXPECT only withExpect).
func parseTargets(list string, withExpect bool) ([]target, error) {
	var out []target
	for item := range strings.SplitSeq(list, ",") {
		parts := strings.Split(item, ":")
		want := 2
		if withExpect {
			want = 3
		}
		if len(parts) != want {
			return nil, fmt.Errorf("%q: want %d fields separated by ':'", item, want)
		}
		tg := target{proto: parts[0]}
		if tg.proto != "tcp" && tg.proto != "udp" {
			return nil, fmt.Errorf("%q: protocol %q, want tcp or udp", item, tg.proto)
		}
		p, err := strconv.Atoi(parts[1])
		if err != nil || p <= 0 || p > 65535 {
			return nil, fmt.Errorf("%q: bad port", item)
		}
		tg.port = p
		if withExpect {
			tg.expect = parts[2]
			if tg.expect != "ok" && tg.expect != "blocked" {
				return nil, fmt.Errorf("%q: expectation %q, want ok or blocked", item, tg.expect)
			}
		}
		out = append(out, tg)
	}
	if len(out) == 0 {
		return nil, errors.New("no targets")
	}
	return out, nil
}

// hammerEvent is one connection whose outcome was not the expected one.
type hammerEvent struct {
	Target string `json:"target"`
	Addr   string `json:"addr"`
	Word   string `json:"word"`
	Start  int64  `json:"start_unix_nano"`
	End    int64  `json:"end_unix_nano"`
}

// hammerTarget is what one target answered, word by word.
type hammerTarget struct {
	Target string         `json:"target"`
	Expect string         `json:"expect"`
	Words  map[string]int `json:"words"`
}

// hammerResult is the last line hammer prints, after "result ".
type hammerResult struct {
	Targets []hammerTarget `json:"targets"`
	Events  []hammerEvent  `json:"events"`
	// EventsLost counts unexpected outcomes beyond the first maxEvents.
	EventsLost int `json:"events_lost"`
}

const maxEvents = 2000

// hammer connects to each target from -workers goroutines (-blocked-workers
// for targets that must be blocked, whose attempts mostly last -timeout),
// each making one connection at a time (TCP: connect, "ping" echoed, close;
// UDP: a connected socket, "ping" echoed), alternating over -addrs and
// sleeping -pace (±50%) between attempts. It prints "ready", then
// "progress N" (attempts finished so far) twice a second, and when its
// standard input closes (or SIGTERM, or -max) it lets the attempts in flight
// finish and prints "result " and a hammerResult in JSON. It does not enter
// a namespace itself (a namespace entered by one thread would not hold for
// the goroutines on others): run it with ip netns exec.
func hammer(args []string) error {
	fs := flag.NewFlagSet("hammer", flag.ContinueOnError)
	list := fs.String("targets", "", "PROTO:PORT:ok|blocked,...")
	addrList := fs.String("addrs", "", "server addresses, comma-separated; attempts alternate over them")
	workers := fs.Int("workers", 1, "connections in flight per target that must succeed")
	blockedWorkers := fs.Int("blocked-workers", 1, "connections in flight per target that must be blocked")
	pace := fs.Duration("pace", 20*time.Millisecond, "pause between one worker's attempts (randomised ±50%)")
	timeout := fs.Duration("timeout", time.Second, "give up on one connection after this long")
	maxDur := fs.Duration("max", 10*time.Minute, "stop after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets, err := parseTargets(*list, true)
	if err != nil {
		return err
	}
	addrs := strings.Split(*addrList, ",")
	if *addrList == "" {
		return errors.New("-addrs is required")
	}

	stop := make(chan struct{})
	var stopOnce sync.Once
	end := func() { stopOnce.Do(func() { close(stop) }) }
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
		}
		end()
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case <-sig:
		case <-time.After(*maxDur):
		case <-stop:
		}
		end()
	}()

	var (
		mu      sync.Mutex
		words   = make([]map[string]int, len(targets))
		events  []hammerEvent
		lost    int
		done    atomic.Int64
		running sync.WaitGroup
	)
	for i := range words {
		words[i] = map[string]int{}
	}
	for i, tg := range targets {
		n := *workers
		if tg.expect == "blocked" {
			n = *blockedWorkers
		}
		for w := range n {
			running.Go(func() {
				// Start the workers spread out, not in lockstep.
				select {
				case <-time.After(time.Duration(rand.Int64N(int64(*pace) + 1))):
				case <-stop:
					return
				}
				for k := w; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					addr := addrs[k%len(addrs)]
					start := time.Now()
					word := attempt(tg.proto, net.JoinHostPort(addr, strconv.Itoa(tg.port)), *timeout)
					finish := time.Now()
					expected := word == "ok"
					if tg.expect == "blocked" {
						expected = word == "refused" || word == "timeout" || word == "reset"
					}
					mu.Lock()
					words[i][word]++
					if !expected {
						if len(events) < maxEvents {
							events = append(events, hammerEvent{Target: tg.String(), Addr: addr, Word: word,
								Start: start.UnixNano(), End: finish.UnixNano()})
						} else {
							lost++
						}
					}
					mu.Unlock()
					done.Add(1)
					d := *pace/2 + time.Duration(rand.Int64N(int64(*pace)+1))
					select {
					case <-time.After(d):
					case <-stop:
						return
					}
				}
			})
		}
	}
	fmt.Println("ready")
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	finished := make(chan struct{})
	go func() {
		running.Wait()
		close(finished)
	}()
	for waiting := true; waiting; {
		select {
		case <-tick.C:
			fmt.Printf("progress %d\n", done.Load())
		case <-finished:
			waiting = false
		}
	}
	res := hammerResult{Events: events, EventsLost: lost}
	for i, tg := range targets {
		res.Targets = append(res.Targets, hammerTarget{Target: tg.String(), Expect: tg.expect, Words: words[i]})
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Printf("result %s\n", b)
	return nil
}

// attempt makes one connection to address and returns its word (see
// classify).
func attempt(proto, address string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial(proto, address)
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	return classify(exchange(c, []byte("ping"), deadline))
}
