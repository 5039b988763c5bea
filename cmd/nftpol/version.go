package main

import (
	"fmt"
	"runtime/debug"
)

// Set at build time by the Makefile, next to version:
//
//	-ldflags "-X main.version=v1.2.0 -X main.commit=<hash> -X main.date=<RFC 3339>"
var (
	commit = ""
	date   = ""
)

// versionTemplate is what --version prints: one line, easy to grep in a
// fleet's inventory.
const versionTemplate = "nftpol {{.Version}}\n"

// versionString says which nftpol this is: version, commit and build date.
// What the build did not set comes from the Go toolchain's build
// information where it has it: the module version for `go install
// ...@v1.2.0`, the VCS revision and commit time for a build inside a
// checkout (unless built with -buildvcs=false).
func versionString() string {
	v, c, d := version, commit, date
	if info, ok := debug.ReadBuildInfo(); ok {
		v, c, d = fillFromBuildInfo(v, c, d, info)
	}
	return fmt.Sprintf("%s, commit %s, built %s", v, orUnknown(c), orUnknown(d))
}

func fillFromBuildInfo(v, c, d string, info *debug.BuildInfo) (string, string, string) {
	if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if c == "" && settings["vcs.revision"] != "" {
		c = settings["vcs.revision"]
		if settings["vcs.modified"] == "true" {
			c += "-dirty"
		}
	}
	if d == "" {
		// The commit's time is the best a build without -X can say.
		d = settings["vcs.time"]
	}
	return v, c, d
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
