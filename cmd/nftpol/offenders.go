package main

import (
	"cmp"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/netns"
	"github.com/nftpol/nftpol/offenders"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules/kernel"
	"github.com/nftpol/nftpol/sockets"
)

// violationSets reads the table's violation sets, on a kernel connection
// of the offender watcher's own, under whichever of their two names they
// have now (kernel.ViolationHits).
type violationSets struct{ k *kernel.Kernel }

func (v violationSets) Hits(table string) ([]offenders.Hit, error) {
	now := time.Now()
	sets, err := v.k.ViolationHits(table)
	if err != nil {
		return nil, err
	}
	var out []offenders.Hit
	for _, set := range sets {
		for _, h := range set.Hits {
			out = append(out, offenders.Hit{
				Key:     offenders.Key{UID: h.UID, Proto: cmp.Or(h.Proto, string(set.Role.Proto)), Port: h.Port},
				Packets: h.Packets,
				Last:    now.Add(-(compiler.ViolationTimeout - h.Expires)),
			})
		}
	}
	return out, nil
}

// socketFinder finds the sockets of an offender and judges them as audit
// does, with the kernel's automatic port range read once per policy.
type socketFinder struct {
	opts  []sockets.Option
	p     *policies.Policy
	judge *audit.Judge
}

func (f *socketFinder) find(p *policies.Policy, k offenders.Key) ([]audit.Finding, error) {
	if p != f.p {
		j, err := audit.New(p)
		if err != nil {
			return nil, err
		}
		auto, err := sockets.ReadAutoPorts(f.opts...)
		if err != nil {
			auto = sockets.DefaultAutoPorts
		}
		j.SetAutoPorts(auto)
		f.p, f.judge = p, j
	}
	list, err := sockets.List(f.opts...)
	if err != nil {
		return nil, err
	}
	var mine []sockets.Socket
	var inodes []uint64
	for _, s := range list {
		if s.UID == k.UID && s.Port == k.Port && string(s.Proto) == k.Proto {
			mine = append(mine, s)
			inodes = append(inodes, s.Inode)
		}
	}
	if len(mine) == 0 {
		return nil, nil
	}
	holders, _, err := sockets.Holders(procRoot, inodes)
	if err != nil {
		return nil, err
	}
	return f.judge.JudgeAll(mine, holders)
}

// newOffenders makes the offender watcher of the agent; start (once the
// agent holds its state directory) binds the NFLOG doorbell of the table's
// violation rules and runs the watcher until stop. Where the doorbell
// cannot be bound, it says why and reads the sets every few seconds.
func (a *app) newOffenders(log *slog.Logger, events func(offenders.Event)) (w *offenders.Watcher, start func(context.Context), stop func(), err error) {
	name := a.v.GetString("netns")
	var kopts []kernel.Option
	var sopts []sockets.Option
	if name != "" {
		kopts = append(kopts, kernel.WithNetNS(name))
		sopts = append(sopts, sockets.WithNetNS(name))
	}
	k, err := kernel.Open(kopts...)
	if err != nil {
		return nil, nil, nil, err
	}
	f := &socketFinder{opts: sopts}
	w = offenders.New(offenders.Config{
		Source: violationSets{k},
		Find:   f.find,
		Terminate: func(ctx context.Context, fs []audit.Finding, grace time.Duration) []audit.Termination {
			return audit.Terminate(ctx, fs, grace, procRoot)
		},
		Log:    log,
		Events: events,
	})
	var bell *offenders.Bell
	cancel := func() {}
	done := make(chan struct{})
	started := false
	start = func(ctx context.Context) {
		started = true
		var ns *os.File
		if name != "" {
			if ns, err = netns.Open(name); err == nil {
				defer ns.Close()
			}
		}
		if err == nil {
			bell, err = offenders.ListenBell(ns, compiler.NotifyGroup)
		}
		if err != nil {
			log.Warn("cannot hear blocked packets at once; reading the violation sets every 5s instead", "err", err.Error())
			bell = nil
		} else {
			w.Hear(bell.C())
		}
		ctx, cancel = context.WithCancel(ctx)
		go func() {
			defer close(done)
			w.Run(ctx)
		}()
		if bell != nil {
			go func() {
				select {
				case <-bell.Done():
					if err := bell.Err(); err != nil {
						log.Error("the NFLOG doorbell stopped; offenders are seen at the next poll only", "err", err.Error())
					}
				case <-ctx.Done():
				}
			}()
		}
	}
	stop = func() {
		if started {
			cancel()
			<-done
		}
		if bell != nil {
			bell.Close()
		}
		k.Close()
	}
	return w, start, stop, nil
}
