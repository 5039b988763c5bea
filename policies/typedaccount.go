package policies

import (
	"slices"

	"github.com/nftpol/nftpol/policies/internal/document"
)

// protocolNames are the names of Protocols, in their order, for the
// decoder: bit i of a document.Account's protocols stands for Protocols[i],
// as in protocolMask.
var protocolNames = func() []string {
	names := make([]string, len(Protocols))
	for i, p := range Protocols {
		names[i] = string(p)
	}
	return names
}()

// item adds the item it, at position pos of file's accounts list: straight
// from the typed Account the decoder made of it when plainAccount takes
// that, else from its generic value, as account does.
func (l *loader) item(file string, pos int, it document.Item) {
	if pa := it.Account(); pa != nil && l.plainAccount(file, pos, pa) {
		return
	}
	l.account(file, pos, it.Value())
}

// plainAccount adds the account pa, at position pos of file's accounts
// list, exactly as account would add the value it stands for, and reports
// true; or reports false, having added nothing, when account would report a
// problem with it. The decoder has checked each value alone already (see
// the document package's account.go).
func (l *loader) plainAccount(file string, pos int, pa *document.Account) bool {
	switch {
	case !pa.Has(document.KeyName) || !validAccountName(pa.Name()):
		return false
	case !pa.Has(document.KeyPorts) || len(pa.Ports()) == 0:
		return false
	case pa.Has(document.KeyProtocols) && pa.Protocols() == 0: // []
		return false
	case !pa.Has(document.KeyUID) && !pa.Has(document.KeyUser):
		return false
	case pa.Has(document.KeyUID) && pa.UID() > maxUID:
		return false
	}
	a := Account{File: file, Protocols: l.p.Protocols}
	if pa.Has(document.KeyProtocols) {
		a.Protocols = l.protocolList(int(pa.Protocols()))
	}
	if zone := l.p.Zone; l.zoneOK {
		for _, r := range pa.Ports() {
			// One test for ports and ranges: a port is a range of one.
			if !zone.Contains(r.Lo) || !zone.Contains(r.Hi) {
				return false
			}
		}
	}

	md := meta{pos: pos, uidOK: true}
	if pa.Has(document.KeyUID) {
		a.UID = pa.UID()
	}
	if pa.Has(document.KeyUser) {
		if len(pa.User()) == 0 {
			return false
		}
		// A failed lookup is cached, for account to report.
		name := string(pa.User())
		uid, err := l.resolve(name)
		if err != nil || pa.Has(document.KeyUID) && a.UID != uid {
			return false
		}
		a.User, a.UID, md.byUser = name, uid, true
	}
	if _, exempt := slices.BinarySearch(l.p.Exempt, a.UID); exempt || a.UID < l.p.MinUID {
		return false
	}

	a.Name = string(pa.Name())
	// Merged in the scratch space, as ports does.
	l.ranges = l.ranges[:0]
	for _, r := range pa.Ports() {
		l.ranges = append(l.ranges, PortRange(r))
	}
	a.Ports = l.keep(MergeInPlace(l.ranges))
	l.accounts = append(l.accounts, a)
	l.meta = append(l.meta, md)
	return true
}
