package main

import (
	"log/slog"

	"github.com/nftpol/nftpol/agent"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules/kernel"
)

// agentKernel is the agent's one kernel connection: the engine commits
// through it, and it owns or follows the table.
type agentKernel interface {
	reconcile.Kernel
	Own(table string) error
	watch(table string) (agent.Monitor, error)
}

// agentConn is agentKernel on rules/kernel.
type agentConn struct{ *kernel.Kernel }

// openAgentKernel opens the agent's kernel connection, owning the table
// where own and the kernel allow.
func (a *app) openAgentKernel(own string, log *slog.Logger) (agentKernel, agent.Mode, error) {
	var opts []kernel.Option
	if ns := a.v.GetString("netns"); ns != "" {
		opts = append(opts, kernel.WithNetNS(ns))
	}
	k, err := kernel.Open(opts...)
	if err != nil {
		return nil, "", err
	}
	return agentConn{k}, agent.ModeMonitor, nil
}

func (c agentConn) Own(table string) error { return nil }

func (c agentConn) watch(table string) (agent.Monitor, error) { return noMonitor{}, nil }

type noMonitor struct{}

func (noMonitor) Changes() <-chan agent.Change { return nil }
func (noMonitor) Close() error                 { return nil }

// policySource is the agent's reader of the policy files: it reads again
// only the files inotify named (policies.Cache).
func (a *app) policySource() agent.Policies {
	return policies.NewCache(a.configFile(), policies.WithPermissionCheck(!a.v.GetBool("insecure-permissions")))
}
