package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"time"
)

// ask connects to the UNIX socket -path as -uid, sends -line and prints the
// one line it gets back: a client of the agent's views socket that says
// what the CLI would never ask.
func ask(args []string) error {
	fs := flag.NewFlagSet("ask", flag.ContinueOnError)
	var e endpoint
	e.register(fs)
	line := fs.String("line", "", "what to send (a newline is added)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := e.enter(); err != nil {
		return err
	}
	c, err := net.DialTimeout("unix", e.path, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(c, *line); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	fmt.Print(reply)
	return err
}
