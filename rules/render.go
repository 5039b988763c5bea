package rules

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Render writes rs in nft syntax, loadable with `nft -f`. The output is
// deterministic: the same ruleset always renders to the same bytes.
//
// The text declares the table, so `nft -f` adds to a table of that name if
// one exists; to replace the table atomically, prefix it with
// RenderReplacePrefix.
func Render(w io.Writer, rs *Ruleset) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	fmt.Fprintf(bw, "table inet %s {\n", rs.Table)
	for i, s := range rs.Sets {
		if i > 0 {
			bw.WriteString("\n")
		}
		renderSet(bw, s)
	}
	for _, c := range rs.Chains {
		bw.WriteString("\n")
		renderChain(bw, c)
	}
	bw.WriteString("}\n")
	return bw.Flush()
}

// RenderString is Render into a string.
func RenderString(rs *Ruleset) string {
	var b strings.Builder
	n := 4096
	for _, s := range rs.Sets {
		n += 64 * len(s.Elements)
	}
	b.Grow(n)
	_ = Render(&b, rs) // a strings.Builder does not fail
	return b.String()
}

// RenderReplacePrefix returns the lines that, placed before Render's output
// in one `nft -f` file, make the load replace the table atomically: the table
// is created if absent (so the delete cannot fail), then deleted, then
// declared anew, all in one transaction.
func RenderReplacePrefix(table string) string {
	return fmt.Sprintf("table inet %s\ndelete table inet %s\n", table, table)
}

func renderSet(w *bufio.Writer, s *Set) {
	fmt.Fprintf(w, "\tset %s {\n", s.Name)
	fmt.Fprintf(w, "\t\ttype %s\n", s.Key)
	if s.Size > 0 {
		fmt.Fprintf(w, "\t\tsize %d\n", s.Size)
	}
	switch {
	case s.Dynamic:
		w.WriteString("\t\tflags dynamic,timeout\n")
	case s.Interval:
		w.WriteString("\t\tflags interval\n")
	}
	if s.Counter {
		w.WriteString("\t\tcounter\n")
	}
	if s.Timeout > 0 {
		fmt.Fprintf(w, "\t\ttimeout %s\n", nftDuration(s.Timeout))
	}
	if s.Comment != "" {
		fmt.Fprintf(w, "\t\tcomment %s\n", Quote(s.Comment))
	}
	if len(s.Elements) > 0 {
		w.WriteString("\t\telements = { ")
		var buf []byte
		for i, e := range s.Elements {
			if i > 0 {
				w.WriteString(",\n\t\t\t     ")
			}
			buf = s.appendElement(buf[:0], e)
			w.Write(buf)
		}
		w.WriteString(" }\n")
	}
	w.WriteString("\t}\n")
}

// ElementString renders one element of s as nft writes it in a set literal.
func (s *Set) ElementString(e Element) string { return string(s.appendElement(nil, e)) }

func (s *Set) appendElement(b []byte, e Element) []byte {
	switch s.Key {
	case KeyUID:
		b = strconv.AppendUint(b, uint64(e.UID), 10)
	case KeyPort:
		b = appendPortRange(b, e.Lo, e.Hi)
	case KeyUIDPort:
		b = strconv.AppendUint(b, uint64(e.UID), 10)
		b = append(b, " . "...)
		b = appendPortRange(b, e.Lo, e.Hi)
	}
	if e.Comment != "" {
		b = append(b, " comment "...)
		b = append(b, Quote(e.Comment)...)
	}
	return b
}

func renderChain(w *bufio.Writer, c *Chain) {
	fmt.Fprintf(w, "\tchain %s {\n", c.Name)
	fmt.Fprintf(w, "\t\ttype filter hook %s priority %s; policy accept;\n", c.Hook, priority(c.Priority))
	for _, r := range c.Rules {
		fmt.Fprintf(w, "\t\t%s\n", r)
	}
	w.WriteString("\t}\n")
}

func appendPortRange(b []byte, lo, hi uint16) []byte {
	b = strconv.AppendUint(b, uint64(lo), 10)
	if lo != hi {
		b = append(b, '-')
		b = strconv.AppendUint(b, uint64(hi), 10)
	}
	return b
}

// nftDuration spells d as nft does: 1h, 30m, 1h30m, 45s.
func nftDuration(d time.Duration) string {
	var b strings.Builder
	for _, u := range []struct {
		d    time.Duration
		unit string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.unit)
			d -= n * u.d
		}
	}
	if d > 0 || b.Len() == 0 {
		fmt.Fprintf(&b, "%dms", d.Milliseconds())
	}
	return b.String()
}

// priority spells a filter chain priority as nft 1.0.6 prints it.
func priority(p int32) string {
	switch {
	case p == 0:
		return "filter"
	case p > 0:
		return fmt.Sprintf("filter + %d", p)
	default:
		return fmt.Sprintf("filter - %d", -p)
	}
}
