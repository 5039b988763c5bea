package bindguard

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// guardMaps are the guard's maps, opened.
type guardMaps struct {
	ports, config, exempt, counters *ebpf.Map
	all                             map[string]*ebpf.Map
}

func mapsOf(ms map[string]*ebpf.Map) *guardMaps {
	return &guardMaps{ports: ms[mapPorts], config: ms[mapConfig], exempt: ms[mapExempt], counters: ms[mapCounters], all: ms}
}

func (m *guardMaps) close() {
	for _, mp := range m.all {
		mp.Close()
	}
}

// batch is how many entries one batch syscall moves: 8,192 ports entries
// are 96 KiB of keys and values.
const batch = 8192

// read returns what the maps hold, and whether the config entry says they
// hold a policy.
func (m *guardMaps) read() (*Data, bool, error) {
	d := &Data{Ports: make([]Port, portsEntries)}
	keys := make([]uint32, batch)
	var cursor ebpf.MapBatchCursor
	for off := 0; off < portsEntries; {
		n, err := m.ports.BatchLookup(&cursor, keys, d.Ports[off:min(off+batch, portsEntries)], nil)
		off += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("bind guard: reading the ports map: %w", err)
		}
	}
	var cfg [2]uint32
	if err := m.config.Lookup(uint32(0), &cfg); err != nil {
		return nil, false, fmt.Errorf("bind guard: reading the config map: %w", err)
	}
	d.MinUID = cfg[0]
	var uid, one uint32
	it := m.exempt.Iterate()
	for it.Next(&uid, &one) {
		d.Exempt = append(d.Exempt, uid)
	}
	if err := it.Err(); err != nil {
		return nil, false, fmt.Errorf("bind guard: reading the exempt map: %w", err)
	}
	slices.Sort(d.Exempt)
	return d, cfg[1]&configValid != 0, nil
}

// write applies diff, which takes the maps to want. The config entry goes
// last: on a fresh guard it is what makes the programs enforce.
func (m *guardMaps) write(diff *Diff, want *Data) error {
	for start := 0; start < len(diff.Ports); start += batch {
		chunk := diff.Ports[start:min(start+batch, len(diff.Ports))]
		keys := make([]uint32, len(chunk))
		vals := make([]Port, len(chunk))
		for i, c := range chunk {
			keys[i], vals[i] = Index(c.Proto, c.Port), c.New
		}
		if _, err := m.ports.BatchUpdate(keys, vals, nil); err != nil {
			return fmt.Errorf("bind guard: writing the ports map: %w", err)
		}
	}
	for _, u := range diff.ExemptAdd {
		if err := m.exempt.Update(u, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("bind guard: adding exempt UID %d: %w", u, err)
		}
	}
	for _, u := range diff.ExemptDel {
		if err := m.exempt.Delete(u); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bind guard: removing exempt UID %d: %w", u, err)
		}
	}
	if diff.MinUID != nil {
		if err := m.config.Update(uint32(0), [2]uint32{want.MinUID, configValid}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("bind guard: writing the config map: %w", err)
		}
	}
	return nil
}

// counterKey is the counters map's key, as the programs write it.
type counterKey struct {
	UID   uint32
	Port  uint16
	Proto uint8
	Kind  uint8
}

func (m *guardMaps) readCounters() ([]Counter, error) {
	var out []Counter
	var k counterKey
	var v uint64
	it := m.counters.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Counter{Kind: k.Kind, UID: k.UID, Proto: Proto(k.Proto), Port: k.Port, Count: v})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bind guard: reading the counters map: %w", err)
	}
	slices.SortFunc(out, func(a, b Counter) int {
		if a.Kind != b.Kind {
			return int(a.Kind) - int(b.Kind)
		}
		if a.UID != b.UID {
			if a.UID < b.UID {
				return -1
			}
			return 1
		}
		if a.Proto != b.Proto {
			return int(a.Proto) - int(b.Proto)
		}
		return int(a.Port) - int(b.Port)
	})
	return out, nil
}
