// Package desired holds the one type that travels from the watcher to the
// uploader: what a single KV key should hold. It lives apart from both so that
// neither imports the other.
package desired

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
)

// Expiration is when a key should expire. The zero value means never.
// When both are set, TTL wins, as it does in the KV API.
type Expiration struct {
	// TTL is relative to the moment of each write; when set, at least
	// kvapi.MinTTLSeconds, since KV refuses a shorter one.
	TTL time.Duration
	// At is an absolute instant. KV refuses one less than
	// kvapi.MinExpirationAheadSeconds ahead, which only the upload can tell,
	// so it is checked then.
	At time.Time
}

// IsZero reports whether the key never expires.
func (e Expiration) IsZero() bool { return e.TTL == 0 && e.At.IsZero() }

// Equal reports whether two expirations ask for the same thing.
func (e Expiration) Equal(o Expiration) bool { return e.TTL == o.TTL && e.At.Equal(o.At) }

// Stamp is what a file's stat said when its content was hashed: device,
// inode, size, and modification and change times in nanoseconds. While a
// file's stamp is unchanged its content is taken to be: ctime cannot be
// set from user space, so a rewrite that restores size and mtime still
// changes it. The watcher stamps only files whose times were old enough to
// be trusted when they were hashed. The zero value is no stamp.
type Stamp struct {
	Dev, Ino     uint64
	Size         int64
	Mtime, Ctime int64
}

// IsZero reports whether s is no stamp.
func (s Stamp) IsZero() bool { return s == Stamp{} }

// RacyWindow is how old a file's times must be before a stamp of it may
// vouch for its content. File times tick coarsely (a jiffy locally, worse
// on network file systems), so a file rewritten with the same size within
// one tick of being read would keep its stamp; like git's "racily clean"
// entries, such a file is read again next time instead of trusted.
const RacyWindow = 2 * time.Second

// Settled reports whether s may vouch for the content read under it: its
// times are older than RacyWindow at now.
func (s Stamp) Settled(now time.Time) bool {
	limit := now.Add(-RacyWindow).UnixNano()
	return s.Mtime < limit && s.Ctime < limit
}

// State is the desired state of one key.
type State struct {
	// Key is the full KV key name, prefix included.
	Key string
	// Path is the absolute path of the file in the tree that makes the
	// key, for messages: for a symlink the link, not its target, so a
	// message names the file a person sees under that key. It is never
	// opened as such. It is empty when Deleted is set.
	Path string
	// Root and Rel are where those bytes are read from: Rel is the
	// /-separated path, free of symlinks when the scan saw it, of a
	// regular file beneath the directory Root, and it is opened with
	// package beneath, which follows no symlink. Root is the tree's root;
	// for a symlink in the tree Rel is its target's path, and for a
	// target outside the root (AllowSymlinksOutside) Root is "/". Both
	// are empty when Deleted is set.
	Root, Rel string
	// File is the identity the scan saw of that file: device, inode and
	// size (from its lstat when it was not hashed, else from the fstat of
	// what was hashed). The uploader publishes only a descriptor whose
	// fstat matches it; any other file found there is not written, and
	// the path is scanned again. It is zero when Deleted or Err is set.
	File beneath.Identity
	// Deleted means the key's file is gone: the key should not exist.
	Deleted bool
	// Hash is the hex SHA-256 of the file's content, computed while streaming it.
	// "" means not computed (the watcher skips it for keys the sink holds
	// no record of, see watcher.Options.NeedHash): such a state never
	// matches what was last written, so the key is written, and the hash
	// recorded is that of the bytes sent. It is "" too when Deleted or Err
	// is set.
	Hash string
	// Size is the content's length in bytes.
	Size int64
	// Stamp vouches for Hash: the file's stat when it was hashed, zero
	// when its times were too recent to be trusted (or it was not
	// hashed). The sink persists it with what it wrote, so a later scan,
	// in a new process too, takes the hash from it without reading the
	// file (watcher.Options.Recorded).
	Stamp Stamp
	// Metadata is the compacted JSON object from the file's sidecar, or nil.
	Metadata json.RawMessage
	// Expiration comes from the config's rules.
	Expiration Expiration
	// Err, when set, means the file exists but cannot be published now (an
	// invalid sidecar, an unreadable or oversized file). The key must be left
	// exactly as it is in KV: neither overwritten nor deleted.
	Err error
}

// Trigger names why a full scan ran. The values are bounded metric labels.
type Trigger string

// The triggers of a full scan.
const (
	TriggerStartup  Trigger = "startup"
	TriggerPeriodic Trigger = "periodic"
	TriggerOverflow Trigger = "overflow"
	TriggerError    Trigger = "watcher_error"
	TriggerReload   Trigger = "sighup"
	TriggerManual   Trigger = "manual"
)

// Snapshot is the complete desired state of a tree after a full scan.
type Snapshot struct {
	Trigger Trigger
	// States holds one entry per key found, including held-back ones (Err set).
	States []State
	// Complete is false when part of the tree could not be read (a missing or
	// unreadable root or directory). Keys absent from an incomplete snapshot
	// must not be deleted.
	Complete bool
	// Reason says why the snapshot is incomplete, for the log.
	Reason string
	// Walk, when set, stands for States, Complete and Reason: it runs the
	// scan itself and calls yield with each state as the scan finds it,
	// in the keys' byte order, so that no one holds the whole tree; then
	// it returns whether the scan was complete, and if not why. It runs
	// at most once. When yield returns false the scan stops, incomplete.
	// Read a snapshot with Each, which handles both forms.
	Walk func(yield func(State) bool) (complete bool, reason string)
}

// Each calls yield with every state of s in the keys' byte order (States
// out of that order are sorted, in a copy) and returns whether s was
// complete and, if not, why. A yield that returns false ends it: the
// snapshot then counts as incomplete, since not every key was seen.
func (s Snapshot) Each(yield func(State) bool) (complete bool, reason string) {
	if s.Walk != nil {
		return s.Walk(yield)
	}
	states := s.States
	if !slices.IsSortedFunc(states, byKey) {
		states = slices.Clone(states)
		slices.SortStableFunc(states, byKey)
	}
	for _, st := range states {
		if !yield(st) {
			return false, ErrStopped.Error()
		}
	}
	return s.Complete, s.Reason
}

// ErrStopped is why a snapshot whose consumer stopped reading it early is
// incomplete.
var ErrStopped = errors.New("the full sync stopped before the scan ended")

func byKey(a, b State) int { return strings.Compare(a.Key, b.Key) }

// Collect reads a snapshot whole: a Snapshot with States, for callers that
// need every state at once (a check, tests).
func (s Snapshot) Collect() Snapshot {
	if s.Walk == nil {
		return s
	}
	out := Snapshot{Trigger: s.Trigger, States: []State{}}
	out.Complete, out.Reason = s.Walk(func(st State) bool {
		out.States = append(out.States, st)
		return true
	})
	return out
}

// Sink consumes what the watcher produces. Implementations must be safe for
// concurrent use; calls may block to apply backpressure.
type Sink interface {
	// Snapshot delivers the result of a full scan. Keys the sink knows under
	// this tree's prefix that are absent from a complete snapshot are gone.
	// A snapshot with a Walk is the scan itself: the sink reads it (Each)
	// before it returns, or the scan does not run.
	Snapshot(s Snapshot)
	// Changed delivers the states of keys that changed, after debouncing.
	Changed(states []State)
}
