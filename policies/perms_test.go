package policies

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const okAccount = "accounts:\n  - {name: site12, uid: 1012, ports: [40010]}\n"

// permDir makes a directory for a permission test: private to this test
// (0700, owned by whoever runs it) so that only what the case changes is
// insecure. /tmp above it is sticky, which the check accepts.
func permDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mustChmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPermissions: files and directories that someone other than root (or
// the user running the test) could change are refused, each with a problem
// naming the path and the command that fixes it.
func TestPermissions(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup writes the policy below dir and makes it insecure; it
		// returns the main file.
		setup func(t *testing.T, dir string) string
		// file and field of the problem, relative to dir; message is a
		// part of it, $DIR standing for dir.
		file, field, message string
	}{
		{"world-writable file", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "policy.yaml")
			mustWrite(t, f, okAccount)
			mustChmod(t, f, 0o666)
			return f
		}, "policy.yaml", "", "file $DIR/policy.yaml is writable by group and others (mode 0666), so they could change the firewall; run chmod go-w $DIR/policy.yaml"},
		{"group-writable file", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "policy.yaml")
			mustWrite(t, f, okAccount)
			mustChmod(t, f, 0o664)
			return f
		}, "policy.yaml", "", "is writable by its group (mode 0664), so they could change the firewall; run chmod g-w $DIR/policy.yaml"},
		{"other-writable file", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "policy.toml")
			mustWrite(t, f, "[[accounts]]\nname = \"a\"\nuid = 1012\nports = [40010]\n")
			mustChmod(t, f, 0o602)
			return f
		}, "policy.toml", "", "is writable by others (mode 0602), so they could change the firewall; run chmod o-w $DIR/policy.toml"},
		{"world-writable directory above", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "etc", "policy.yaml")
			mustWrite(t, f, okAccount)
			mustChmod(t, filepath.Join(dir, "etc"), 0o777)
			return f
		}, "etc/policy.yaml", "", "directory $DIR/etc is writable by group and others (mode 0777), so they could change the firewall; run chmod go-w $DIR/etc"},
		{"group-writable include directory", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "policy.yaml")
			mustWrite(t, f, "include: policies.d\n")
			mustWrite(t, filepath.Join(dir, "policies.d", "site12.yaml"), okAccount)
			mustChmod(t, filepath.Join(dir, "policies.d"), 0o775)
			return f
		}, "policy.yaml", "include", "directory $DIR/policies.d is writable by its group (mode 0775), so they could change the firewall; run chmod g-w $DIR/policies.d"},
		{"sticky include directory", func(t *testing.T, dir string) string {
			// Sticky is enough above a file, not for the include
			// directory: anyone could add an account file.
			f := filepath.Join(dir, "policy.yaml")
			mustWrite(t, f, "include: policies.d\n")
			mustWrite(t, filepath.Join(dir, "policies.d", "site12.yaml"), okAccount)
			mustChmod(t, filepath.Join(dir, "policies.d"), os.ModeSticky|0o777)
			return f
		}, "policy.yaml", "include", "directory $DIR/policies.d is writable by group and others (mode 0777)"},
		{"world-writable include file", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "policy.yaml")
			mustWrite(t, f, "include: policies.d\n")
			inc := filepath.Join(dir, "policies.d", "site12.json")
			mustWrite(t, inc, `{"accounts": [{"name": "site12", "uid": 1012, "ports": [40010]}]}`)
			mustChmod(t, inc, 0o646)
			return f
		}, "policies.d/site12.json", "", "file $DIR/policies.d/site12.json is writable by others (mode 0646)"},
		{"symlink into a writable directory", func(t *testing.T, dir string) string {
			// The link's own directory is fine; where it points is
			// not.
			target := filepath.Join(dir, "shared", "policy.yaml")
			mustWrite(t, target, okAccount)
			mustChmod(t, filepath.Join(dir, "shared"), 0o777)
			f := filepath.Join(dir, "etc", "policy.yaml")
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, f); err != nil {
				t.Fatal(err)
			}
			return f
		}, "etc/policy.yaml", "", "directory $DIR/shared is writable by group and others (mode 0777)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := permDir(t)
			file := tc.setup(t, dir)
			_, err := Load(file, WithLookup(fakeLookup))
			if !errors.Is(err, ErrInsecurePermissions) {
				t.Fatalf("Load() error = %v, want one matching ErrInsecurePermissions", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) != 1 {
				t.Fatalf("Load() error = %v, want one problem", err)
			}
			got := ve.Problems[0]
			wantFile := filepath.Join(dir, tc.file)
			wantMsg := strings.ReplaceAll(tc.message, "$DIR", dir)
			if got.File != wantFile || got.Field != tc.field || got.Account != "" || !strings.Contains(got.Message, wantMsg) {
				t.Errorf("problem:\n got %#v\nwant file %s, field %q, message containing %q", got, wantFile, tc.field, wantMsg)
			}

			// The same files load when the check is off.
			if _, err := Load(file, WithLookup(fakeLookup), WithPermissionCheck(false)); err != nil {
				t.Errorf("WithPermissionCheck(false): %v", err)
			}
		})
	}
}

// TestPermissionsAccepted: what the check must let through.
func TestPermissionsAccepted(t *testing.T) {
	dir := permDir(t)
	// Read-only and owner-writable files, a 0755 include directory, a
	// sticky world-writable directory above the main file (like /tmp,
	// where these tests run), and a symlinked include file.
	sticky := filepath.Join(dir, "sticky")
	mustWrite(t, filepath.Join(sticky, "policy.yaml"), "include: policies.d\n"+okAccount)
	mustChmod(t, sticky, os.ModeSticky|0o777)
	mustWrite(t, filepath.Join(sticky, "policies.d", "site13.yaml"), "accounts:\n  - {name: site13, uid: 1013, ports: [40020]}\n")
	mustChmod(t, filepath.Join(sticky, "policies.d", "site13.yaml"), 0o400)
	mustWrite(t, filepath.Join(dir, "elsewhere", "site14.yaml"), "accounts:\n  - {name: site14, uid: 1014, ports: [40030]}\n")
	if err := os.Symlink(filepath.Join(dir, "elsewhere", "site14.yaml"), filepath.Join(sticky, "policies.d", "site14.yaml")); err != nil {
		t.Fatal(err)
	}
	p, err := Load(filepath.Join(sticky, "policy.yaml"), WithLookup(fakeLookup))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Accounts) != 3 {
		t.Errorf("got %d accounts, want 3", len(p.Accounts))
	}
}

// TestPermissionsReportedOnce: a bad directory above several files is one
// problem, and permission problems do not hide problems in the content.
func TestPermissionsReportedOnce(t *testing.T) {
	dir := permDir(t)
	etc := filepath.Join(dir, "etc")
	mustWrite(t, filepath.Join(etc, "policy.yaml"), "include: policies.d\naction: deny\n")
	mustWrite(t, filepath.Join(etc, "policies.d", "a.yaml"), "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n")
	mustWrite(t, filepath.Join(etc, "policies.d", "b.yaml"), "accounts:\n  - {name: b, uid: 1013, ports: [40020]}\n")
	mustChmod(t, etc, 0o757)
	_, err := Load(filepath.Join(etc, "policy.yaml"), WithLookup(fakeLookup))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Load() error = %v", err)
	}
	var perms, other int
	for _, p := range ve.Problems {
		if p.Err == ErrInsecurePermissions {
			perms++
		} else {
			other++
		}
	}
	if perms != 1 || other != 1 {
		t.Errorf("got %d permission problems and %d others, want 1 and 1:\n%v", perms, other, err)
	}
}

// TestPermissionsOwner: files and directories owned by another user are
// refused. Making them needs root.
func TestPermissionsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	const nobody = 65534
	for _, tc := range []struct {
		name, chown, file, field, message string
	}{
		{"main file", "policy.yaml", "policy.yaml", "",
			"file $DIR/policy.yaml is owned by uid 65534, not root, so that user could change the firewall; run chown root $DIR/policy.yaml"},
		{"include directory", "policies.d", "policy.yaml", "include",
			"directory $DIR/policies.d is owned by uid 65534, not root"},
		{"include file", "policies.d/site12.yaml", "policies.d/site12.yaml", "",
			"file $DIR/policies.d/site12.yaml is owned by uid 65534, not root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := permDir(t)
			mustWrite(t, filepath.Join(dir, "policy.yaml"), "include: policies.d\n")
			mustWrite(t, filepath.Join(dir, "policies.d", "site12.yaml"), okAccount)
			if err := os.Chown(filepath.Join(dir, tc.chown), nobody, nobody); err != nil {
				t.Fatal(err)
			}
			_, err := Load(filepath.Join(dir, "policy.yaml"), WithLookup(fakeLookup))
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) != 1 {
				t.Fatalf("Load() error = %v, want one problem", err)
			}
			got := ve.Problems[0]
			wantMsg := strings.ReplaceAll(tc.message, "$DIR", dir)
			if got.File != filepath.Join(dir, tc.file) || got.Field != tc.field || !strings.Contains(got.Message, wantMsg) {
				t.Errorf("problem:\n got %#v\nwant file %s, field %q, message containing %q", got, tc.file, tc.field, wantMsg)
			}
		})
	}
}

// TestIncludeFIFO: a FIFO in the include directory is refused, not read
// (which would block forever).
func TestIncludeFIFO(t *testing.T) {
	dir := permDir(t)
	mustWrite(t, filepath.Join(dir, "policy.yaml"), "include: policies.d\n")
	fifo := filepath.Join(dir, "policies.d", "site12.yaml")
	if err := os.MkdirAll(filepath.Dir(fifo), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(filepath.Join(dir, "policy.yaml"))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].File != fifo || !strings.Contains(ve.Problems[0].Message, "not a regular file") {
		t.Fatalf("Load() error = %v, want one problem: %s is not a regular file", err, fifo)
	}
}
