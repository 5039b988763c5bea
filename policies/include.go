package policies

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/nftpol/nftpol/policies/internal/document"
)

// includeReader reads the files of one include directory. Its read runs on
// several goroutines at once: it only looks at the file system and decodes,
// and leaves everything that reports a problem to the loader.
type includeReader struct {
	dir        string
	dec        *document.Decoder
	checkPerms bool
	// The include directory's absolute path (or why there is none) and,
	// when realOK, where it leads once symbolic links are resolved: the
	// same for every file in it, so each file costs no more than a stat
	// and a read.
	absDir  string
	absErr  error
	realDir string
	realOK  bool
}

func (l *loader) newIncludeReader(dir string) *includeReader {
	in := &includeReader{dir: dir, dec: l.dec, checkPerms: l.checkPerms}
	if in.checkPerms {
		in.absDir, in.absErr = filepath.Abs(dir)
		if in.absErr == nil {
			var err error
			in.realDir, err = filepath.EvalSymlinks(in.absDir)
			in.realOK = err == nil
		}
	}
	return in
}

// includeRead is what includeReader.read found out about one file.
type includeRead struct {
	path    string
	fi      fs.FileInfo
	statErr error
	// For checkStat, when checking permissions.
	abs    string
	absErr error
	real   string
	// The decoded file, or why it could not be read or decoded. Set only
	// when it is a regular file other than the main file.
	doc *document.Document
	err error
}

// includeEntry is a file of the include directory as listed.
type includeEntry struct {
	name string
	// symlink says the entry is a symbolic link.
	symlink bool
}

// read stats the include file e and, unless the loader will skip it or
// refuse it as it is, reads and decodes it.
func (in *includeReader) read(e includeEntry, mainInfo fs.FileInfo) *includeRead {
	name := e.name
	r := &includeRead{path: filepath.Join(in.dir, name)}
	r.fi, r.statErr = os.Stat(r.path)
	if r.statErr != nil || mainInfo != nil && os.SameFile(r.fi, mainInfo) || !r.fi.Mode().IsRegular() {
		return r
	}
	if in.checkPerms {
		if in.absErr != nil {
			r.abs, r.absErr = filepath.Abs(r.path)
			r.real = realPath(r.abs, r.absErr)
		} else {
			// What filepath.Abs and filepath.EvalSymlinks would say of
			// the file's own path, without a system call per directory
			// above it: only the file itself may still be a link.
			r.abs = filepath.Join(in.absDir, name)
			if in.realOK && !e.symlink {
				r.real = filepath.Join(in.realDir, name)
			} else {
				r.real = realPath(r.abs, nil)
			}
		}
	}
	r.doc, r.err = in.readFile(r.path, r.fi.Size())
	return r
}

// readFile is readFile for an include file, a regular file of about size
// bytes whose name has the extension of a format (include filtered them by
// name).
func (in *includeReader) readFile(path string, size int64) (*document.Document, error) {
	b, err := readRegular(path, size)
	if err != nil {
		return nil, err
	}
	return decodeFile(in.dec, format(path), b)
}

// readRegular reads the regular file path, of about size bytes, as
// os.ReadFile does and with the same errors, but in four system calls
// instead of six: os.ReadFile also tries to register the file with the
// network poller, and stats it again. Reading 50,000 include files took 40%
// less time that way on the machine this was measured on, where a system
// call costs a microsecond or two.
func readRegular(path string, size int64) ([]byte, error) {
	var fd int
	for {
		var err error
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == nil {
			break
		}
		if err != syscall.EINTR {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
	}
	defer syscall.Close(fd)
	// One byte more than the size, so that a file that did not grow is
	// read whole by the first read; the second one sees the end.
	b := make([]byte, 0, max(size, 0)+1)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := syscall.Read(fd, b[len(b):cap(b)])
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		case n == 0:
			return b, nil
		}
		b = b[:len(b)+n]
	}
}
