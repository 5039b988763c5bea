package allocation

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nftpol/nftpol/policies"
)

func r(lo, hi uint16) policies.PortRange { return policies.PortRange{Lo: lo, Hi: hi} }

func TestFree(t *testing.T) {
	zone := r(40010, 40099)
	tests := []struct {
		name string
		used []policies.PortRange
		want []policies.PortRange
	}{
		{"empty", nil, []policies.PortRange{zone}},
		{"full", []policies.PortRange{zone}, nil},
		{"holes, unsorted and overlapping",
			[]policies.PortRange{r(40050, 40059), r(40010, 40019), r(40015, 40024), r(40090, 40099)},
			[]policies.PortRange{r(40025, 40049), r(40060, 40089)}},
		{"ranges reaching outside the zone",
			[]policies.PortRange{r(40000, 40011), r(40098, 40200)},
			[]policies.PortRange{r(40012, 40097)}},
		{"single ports", []policies.PortRange{r(40010, 40010), r(40012, 40012)},
			[]policies.PortRange{r(40011, 40011), r(40013, 40099)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Free(zone, tt.used)); diff != "" {
				t.Errorf("Free (-want +got):\n%s", diff)
			}
		})
	}
	// The zone may end at 65535 without Hi+1 wrapping.
	if diff := cmp.Diff([]policies.PortRange{r(65530, 65534)}, Free(r(65530, 65535), []policies.PortRange{r(65535, 65535)})); diff != "" {
		t.Errorf("Free at the top of the port space (-want +got):\n%s", diff)
	}
}

func TestFind(t *testing.T) {
	zone := r(40010, 40099)
	tests := []struct {
		name string
		used []policies.PortRange
		size int
		want policies.PortRange
	}{
		{"empty zone", nil, 10, r(40010, 40019)},
		{"next aligned block", []policies.PortRange{r(40010, 40019)}, 10, r(40020, 40029)},
		// 40013-40019 is free but unaligned; the aligned 40020-40029 wins.
		{"aligned block preferred", []policies.PortRange{r(40010, 40012)}, 5, r(40015, 40019)},
		{"aligned beyond an unaligned hole", []policies.PortRange{r(40010, 40012), r(40020, 40024)}, 10, r(40030, 40039)},
		// Fragmentation: two holes of 6 ports, neither holding an aligned
		// block of 5 (40015-40019 and 40025-40029 are partly taken).
		{"unaligned when no aligned block is free",
			[]policies.PortRange{r(40010, 40012), r(40019, 40021), r(40028, 40099)},
			5, r(40013, 40017)},
		{"hole smaller than the block skipped", []policies.PortRange{r(40010, 40010), r(40013, 40015)}, 3, r(40016, 40018)},
		{"aligned after a fitting unaligned hole", []policies.PortRange{r(40010, 40014), r(40018, 40019)}, 3, r(40022, 40024)},
		{"exactly fitting hole", []policies.PortRange{r(40010, 40019), r(40030, 40099)}, 10, r(40020, 40029)},
		{"single port", []policies.PortRange{r(40010, 40010)}, 1, r(40011, 40011)},
		{"whole zone", nil, 90, zone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Find(zone, tt.used, tt.size)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Find(%d) = %v, want %v", tt.size, got, tt.want)
			}
		})
	}
}

func TestFindFull(t *testing.T) {
	zone := r(40010, 40099)
	_, err := Find(zone, []policies.PortRange{zone}, 1)
	var full *FullError
	if !errors.As(err, &full) || full.Free != 0 {
		t.Fatalf("full zone: %v", err)
	}
	if !strings.Contains(err.Error(), "every port of the zone 40010-40099 belongs to an account") {
		t.Errorf("message: %v", err)
	}

	_, err = Find(zone, []policies.PortRange{r(40010, 40050), r(40056, 40060), r(40064, 40099)}, 6)
	if !errors.As(err, &full) || full.Free != 8 || full.Largest != r(40051, 40055) {
		t.Fatalf("fragmented zone: %v (%+v)", err, full)
	}
	want := "no free block of 6 ports in the zone 40010-40099: 8 ports are free, the largest free block is 40051-40055 (5 ports); ask for at most 5"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("message:\n%v\nwant it to contain\n%s", err, want)
	}

	for _, n := range []int{0, -1, 91} {
		if _, err := Find(zone, nil, n); err == nil || errors.As(err, &full) {
			t.Errorf("size %d: %v, want a size error", n, err)
		}
	}
}
