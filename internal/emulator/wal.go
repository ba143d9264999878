package emulator

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// The data directory holds one append-only log. Each record is
//
//	uint32 LE payload length | uint32 LE CRC-32C of payload | payload
//
// and a payload is kind, account, namespace, then per kind: key, metadata,
// expiration and the value (put); key (delete); title (namespace upsert);
// nothing (namespace delete). Strings are uvarint-length-prefixed; the value
// runs to the end of the payload so it can be read in place. A request's
// records are written together and fsynced once before it is answered.
// Replay stops at the first record that is short or fails its checksum: the
// rest is copied aside to kv.log.corrupt-<time> and cut off.
const (
	walName  = "kv.log"
	walMagic = "KVEMU01\n"
	// maxPayload bounds a record: a 25 MiB value plus key, metadata and ids.
	maxPayload = MaxValueBytes + 64<<10
	// Compaction rewrites the live records once garbage exceeds both this
	// size and the live data, so rewrites stay proportional to the writes.
	defaultCompactMinGarbage = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type wal struct {
	dir     string
	logger  *slog.Logger
	f       *os.File
	size    int64 // end of the log
	live    int64 // bytes of put records still current
	closed  bool
	bw      *bufio.Writer // reused across appends
	scratch []byte

	compactMinGarbage int64
}

// openWAL opens (creating) the log; load must be called next.
func openWAL(dir string, logger *slog.Logger) (*wal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("emulator: data dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, walName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("emulator: open %s: %w", path, err)
	}
	return &wal{dir: dir, logger: logger, f: f, compactMinGarbage: defaultCompactMinGarbage}, nil
}

// load replays the log and cuts off an unreadable tail.
func (w *wal) load(replay func(nsRef, mutation, loc)) error {
	path := filepath.Join(w.dir, walName)
	st, err := w.f.Stat()
	if err != nil {
		return fmt.Errorf("emulator: stat %s: %w", path, err)
	}
	end := st.Size()
	magic := make([]byte, len(walMagic))
	if _, err := w.f.ReadAt(magic, 0); err != nil || string(magic) != walMagic {
		if end > 0 {
			w.logger.Error("emulator: data file has no valid header; setting it aside and starting empty", "file", path)
			w.setAside(0, end)
		}
		return w.reset()
	}
	r := bufio.NewReaderSize(io.NewSectionReader(w.f, int64(len(walMagic)), end-int64(len(walMagic))), 1<<20)
	pos := int64(len(walMagic))
	var hdr [8]byte
	var buf []byte
	bad := ""
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err != io.EOF {
				bad = "truncated record header"
			}
			break
		}
		n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
		if n < 3 || n > maxPayload {
			bad = "implausible record length " + strconv.FormatInt(n, 10)
			break
		}
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			bad = "truncated record"
			break
		}
		if crc32.Checksum(buf, castagnoli) != binary.LittleEndian.Uint32(hdr[4:8]) {
			bad = "checksum mismatch"
			break
		}
		ref, m, valOff, err := decodeRecord(buf)
		if err != nil {
			bad = err.Error()
			break
		}
		replay(ref, m, loc{off: pos + 8 + valOff, size: n - valOff, recLen: 8 + n})
		pos += 8 + n
	}
	if bad != "" {
		w.logger.Error("emulator: data file is damaged; keeping the records before the damage",
			"file", path, "offset", pos, "discarded_bytes", end-pos, "reason", bad)
		w.setAside(pos, end)
		if err := w.f.Truncate(pos); err != nil {
			return fmt.Errorf("emulator: truncate %s to %d: %w", path, pos, err)
		}
		if err := w.f.Sync(); err != nil {
			return fmt.Errorf("emulator: sync %s: %w", path, err)
		}
	}
	w.size = pos
	return nil
}

// setAside copies [from, to) of the log to a side file for inspection.
func (w *wal) setAside(from, to int64) {
	name := filepath.Join(w.dir, walName+".corrupt-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	out, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, err = io.Copy(out, io.NewSectionReader(w.f, from, to-from))
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		w.logger.Error("emulator: could not save the damaged data aside", "file", name, "err", err)
		return
	}
	w.logger.Warn("emulator: damaged data saved aside", "file", name, "bytes", to-from)
}

// reset empties the log and writes the header.
func (w *wal) reset() error {
	if err := w.f.Truncate(0); err != nil {
		return fmt.Errorf("emulator: truncate %s: %w", w.f.Name(), err)
	}
	if _, err := w.f.Write([]byte(walMagic)); err != nil {
		return fmt.Errorf("emulator: write %s: %w", w.f.Name(), err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("emulator: sync %s: %w", w.f.Name(), err)
	}
	w.size = int64(len(walMagic))
	return nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// encodePrefix returns a record's payload up to (not including) the value.
func encodePrefix(b []byte, ref nsRef, m mutation) []byte {
	b = append(b, m.kind)
	b = appendString(b, ref.account)
	b = appendString(b, ref.id)
	switch m.kind {
	case recPut:
		b = appendString(b, m.key)
		b = appendString(b, string(m.meta))
		b = binary.AppendVarint(b, m.exp)
	case recDelete:
		b = appendString(b, m.key)
	case recNSUpsert:
		b = appendString(b, m.title)
	}
	return b
}

var errBadRecord = errors.New("undecodable record")

func decodeRecord(p []byte) (nsRef, mutation, int64, error) {
	var m mutation
	m.kind = p[0]
	rest := p[1:]
	str := func() (string, bool) {
		n, k := binary.Uvarint(rest)
		if k <= 0 || uint64(len(rest)-k) < n {
			return "", false
		}
		s := string(rest[k : k+int(n)])
		rest = rest[k+int(n):]
		return s, true
	}
	account, ok1 := str()
	id, ok2 := str()
	if !ok1 || !ok2 {
		return nsRef{}, m, 0, errBadRecord
	}
	ref := nsRef{account, id}
	ok := true
	switch m.kind {
	case recPut:
		var meta string
		m.key, ok = str()
		if ok {
			meta, ok = str()
		}
		if ok {
			exp, k := binary.Varint(rest)
			ok = k > 0
			if ok {
				m.exp = exp
				rest = rest[k:]
			}
		}
		if meta != "" {
			m.meta = []byte(meta)
		}
		m.value = rest
	case recDelete:
		m.key, ok = str()
	case recNSUpsert:
		m.title, ok = str()
	case recNSDelete:
	default:
		ok = false
	}
	if !ok {
		return ref, m, 0, errBadRecord
	}
	valOff := int64(len(p) - len(m.value))
	if m.kind != recPut {
		valOff = int64(len(p))
	}
	return ref, m, valOff, nil
}

// writeRecords appends records through bw starting at offset pos.
func writeRecords(bw *bufio.Writer, pos int64, ref nsRef, muts []mutation, scratch []byte) ([]loc, int64, error) {
	locs := make([]loc, len(muts))
	var hdr [8]byte
	for i, m := range muts {
		prefix := encodePrefix(scratch[:0], ref, m)
		scratch = prefix
		var val []byte
		if m.kind == recPut {
			val = m.value
		}
		n := len(prefix) + len(val)
		crc := crc32.Update(crc32.Update(0, castagnoli, prefix), castagnoli, val)
		binary.LittleEndian.PutUint32(hdr[0:4], uint32(n))
		binary.LittleEndian.PutUint32(hdr[4:8], crc)
		if _, err := bw.Write(hdr[:]); err != nil {
			return nil, 0, err
		}
		if _, err := bw.Write(prefix); err != nil {
			return nil, 0, err
		}
		if _, err := bw.Write(val); err != nil {
			return nil, 0, err
		}
		locs[i] = loc{off: pos + 8 + int64(len(prefix)), size: int64(len(val)), recLen: 8 + int64(n)}
		pos += 8 + int64(n)
	}
	return locs, pos, bw.Flush()
}

// append writes and fsyncs mutations; on failure the log is cut back so
// no half-written record precedes later ones.
func (w *wal) append(ref nsRef, muts []mutation) ([]loc, error) {
	if w.closed {
		return nil, errors.New("emulator: closed")
	}
	if w.bw == nil {
		w.bw = bufio.NewWriterSize(w.f, 256<<10)
		w.scratch = make([]byte, 0, 1024)
	}
	w.bw.Reset(w.f)
	locs, end, err := writeRecords(w.bw, w.size, ref, muts, w.scratch)
	if err == nil {
		err = w.f.Sync()
	}
	if err != nil {
		if terr := w.f.Truncate(w.size); terr != nil {
			w.logger.Error("emulator: cannot cut back a failed write; the tail will be dropped at next start",
				"file", w.f.Name(), "err", terr)
		}
		return nil, fmt.Errorf("emulator: append to %s: %w", w.f.Name(), err)
	}
	w.size = end
	return locs, nil
}

func (w *wal) readAt(off, size int64) ([]byte, error) {
	b := make([]byte, size)
	if _, err := w.f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("emulator: read %s at %d: %w", w.f.Name(), off, err)
	}
	return b, nil
}

func (w *wal) needsCompaction() bool {
	garbage := w.size - int64(len(walMagic)) - w.live
	return !w.closed && garbage > w.compactMinGarbage && garbage > w.live
}

// compact writes the live state to a new log and swaps it in atomically
// (temp file, fsync, rename, directory fsync). Expired keys are dropped.
// The caller holds the store lock exclusively.
func (w *wal) compact(nss map[nsRef]*namespace, now int64) error {
	path := filepath.Join(w.dir, walName)
	tmp := path + ".compact"
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		nf.Close()
		os.Remove(tmp)
		return err
	}
	bw := bufio.NewWriterSize(nf, 1<<20)
	if _, err := bw.WriteString(walMagic); err != nil {
		return fail(err)
	}
	type moved struct {
		it *item
		l  loc
	}
	var (
		pos     = int64(len(walMagic))
		updates []moved
		dropped []func()
		scratch = make([]byte, 0, 1024)
		live    int64
	)
	for ref, ns := range nss {
		if ns.deleted {
			_, end, err := writeRecords(bw, pos, ref, []mutation{{kind: recNSDelete}}, scratch)
			if err != nil {
				return fail(err)
			}
			pos = end
			continue
		}
		_, end, err := writeRecords(bw, pos, ref, []mutation{{kind: recNSUpsert, title: ns.title}}, scratch)
		if err != nil {
			return fail(err)
		}
		pos = end
		for k, it := range ns.keys {
			if it.expired(now) {
				ns, k := ns, k
				dropped = append(dropped, func() { delete(ns.keys, k); ns.sorted = nil })
				continue
			}
			v, err := w.readAt(it.off, it.size)
			if err != nil {
				return fail(err)
			}
			locs, end, err := writeRecords(bw, pos, ref, []mutation{{kind: recPut, key: k, value: v, meta: it.meta, exp: it.exp}}, scratch)
			if err != nil {
				return fail(err)
			}
			pos = end
			live += locs[0].recLen
			updates = append(updates, moved{it, locs[0]})
		}
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if err := nf.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	syncDir(w.dir)
	old := w.f
	w.f, w.size, w.live = nf, pos, live
	old.Close()
	for _, u := range updates {
		u.it.off, u.it.size, u.it.recLen = u.l.off, u.l.size, u.l.recLen
	}
	for _, d := range dropped {
		d()
	}
	w.logger.Info("emulator: compacted the data file", "file", path, "bytes", pos)
	return nil
}

// syncDir makes a rename durable; failures only weaken durability.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func (w *wal) close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	serr := w.f.Sync()
	if err := w.f.Close(); err != nil {
		return err
	}
	return serr
}
