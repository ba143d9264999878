//go:build unix

package beneath

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
)

// modes runs f with openat2 (where the kernel has it) and with the
// component walk that replaces it elsewhere.
func modes(t *testing.T, f func(t *testing.T)) {
	for _, m := range []struct {
		name string
		on   bool
	}{{"openat2", true}, {"walk", false}} {
		t.Run(m.name, func(t *testing.T) {
			if m.on && runtime.GOOS != "linux" {
				t.Skip("openat2 is Linux's")
			}
			was := SetOpenat2(m.on)
			t.Cleanup(func() { SetOpenat2(was) })
			f(t)
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

// fixture is a root with a file, a subdirectory, and symlinks of every
// kind next to a secret outside it.
func fixture(t *testing.T) (root, outside string) {
	base := t.TempDir()
	root, outside = filepath.Join(base, "root"), filepath.Join(base, "outside")
	write(t, filepath.Join(outside, "secret"), "SECRET")
	write(t, filepath.Join(root, "file"), "inside")
	write(t, filepath.Join(root, "sub/deep"), "deep")
	symlink(t, filepath.Join(outside, "secret"), filepath.Join(root, "abs-link"))
	symlink(t, "../outside/secret", filepath.Join(root, "rel-link"))
	symlink(t, "file", filepath.Join(root, "inside-link"))
	symlink(t, "sub", filepath.Join(root, "dir-link"))
	symlink(t, outside, filepath.Join(root, "out-dir"))
	symlink(t, "/proc/self/environ", filepath.Join(root, "environ"))
	return root, outside
}

func openRoot(t *testing.T, path string) *Root {
	t.Helper()
	r, err := OpenRoot(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestOpenRefuses(t *testing.T) {
	modes(t, func(t *testing.T) {
		root, _ := fixture(t)
		r := openRoot(t, root)
		for _, tc := range []struct {
			name, rel string
			want      error
		}{
			{"symlink last, absolute target outside", "abs-link", ErrSymlink},
			{"symlink last, relative target outside", "rel-link", ErrSymlink},
			{"symlink last, target inside", "inside-link", ErrSymlink},
			{"magic link target", "environ", ErrSymlink},
			{"symlink as a directory, target inside", "dir-link/deep", ErrSymlink},
			{"symlink as a directory, target outside", "out-dir/secret", ErrSymlink},
			{"dot-dot", "../outside/secret", ErrEscape},
			{"dot-dot inside", "sub/../file", ErrEscape},
			{"dot", "./file", ErrEscape},
			{"empty component", "sub//deep", ErrEscape},
			{"trailing slash", "sub/", ErrEscape},
			{"absolute", filepath.Join(root, "file"), ErrEscape},
			{"absolute outside", "/etc/passwd", ErrEscape},
			{"missing", "nope", fs.ErrNotExist},
			{"file as a directory", "file/x", syscall.ENOTDIR},
		} {
			t.Run(tc.name, func(t *testing.T) {
				f, err := r.Open(tc.rel)
				if err == nil {
					b, _ := io.ReadAll(f)
					f.Close()
					t.Fatalf("Open(%q) read %q", tc.rel, b)
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("Open(%q) = %v, want %v", tc.rel, err, tc.want)
				}
				var pe *fs.PathError
				if !errors.As(err, &pe) {
					t.Fatalf("Open(%q) = %T, want *fs.PathError", tc.rel, err)
				}
				if fd, err := OpenFd(r.Fd(), tc.rel); !errors.Is(err, tc.want) {
					if err == nil {
						syscall.Close(fd)
					}
					t.Fatalf("OpenFd(%q) = %v, want %v", tc.rel, err, tc.want)
				}
			})
		}
	})
}

func TestOpenReads(t *testing.T) {
	modes(t, func(t *testing.T) {
		root, _ := fixture(t)
		r := openRoot(t, root)
		for rel, want := range map[string]string{"file": "inside", "sub/deep": "deep"} {
			f, err := r.Open(rel)
			if err != nil {
				t.Fatalf("Open(%q): %v", rel, err)
			}
			b, err := io.ReadAll(f)
			f.Close()
			if err != nil || string(b) != want {
				t.Fatalf("Open(%q) read %q, %v; want %q", rel, b, err, want)
			}
		}
		d, err := r.OpenDir("sub")
		if err != nil {
			t.Fatal(err)
		}
		names, err := d.Readdirnames(-1)
		d.Close()
		if err != nil || len(names) != 1 || names[0] != "deep" {
			t.Fatalf("OpenDir(sub) lists %v, %v", names, err)
		}
		if _, err := r.OpenDir("dir-link"); !errors.Is(err, ErrSymlink) {
			t.Fatalf("OpenDir(dir-link) = %v, want ErrSymlink", err)
		}
		if _, err := r.OpenDir("file"); !errors.Is(err, syscall.ENOTDIR) {
			t.Fatalf("OpenDir(file) = %v, want ENOTDIR", err)
		}
	})
}

func TestLstat(t *testing.T) {
	modes(t, func(t *testing.T) {
		root, _ := fixture(t)
		r := openRoot(t, root)
		fi, err := r.Lstat("abs-link")
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			t.Fatalf("Lstat(abs-link) = %v, %v; want the symlink itself", fi, err)
		}
		fi, err = r.Lstat("sub/deep")
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != 4 {
			t.Fatalf("Lstat(sub/deep) = %v, %v", fi, err)
		}
		want, _ := os.Lstat(filepath.Join(root, "sub/deep"))
		if a, _ := IdentityOf(fi); a != func() Identity { b, _ := IdentityOf(want); return b }() {
			t.Fatalf("Lstat's identity %+v is not os.Lstat's", a)
		}
		if _, err := r.Lstat("out-dir/secret"); !errors.Is(err, ErrSymlink) {
			t.Fatalf("Lstat(out-dir/secret) = %v, want ErrSymlink", err)
		}
		if _, err := r.Lstat("../root/file"); !errors.Is(err, ErrEscape) {
			t.Fatalf("Lstat(../root/file) = %v, want ErrEscape", err)
		}
		if fi, err := r.Lstat(""); err != nil || !fi.IsDir() {
			t.Fatalf("Lstat of the root = %v, %v", fi, err)
		}
	})
}

// TestDirSwappedAfterRootOpened: the root is open, then a directory in it
// becomes a symlink to the outside (mv sub .s; ln -s /outside sub). Paths
// through it are refused; a directory descriptor opened before the swap
// still reads the moved directory, whose files keep their identity, and
// that is what the identity check is for.
func TestDirSwappedAfterRootOpened(t *testing.T) {
	modes(t, func(t *testing.T) {
		root, outside := fixture(t)
		r := openRoot(t, root)
		fi, err := r.Lstat("sub/deep")
		if err != nil {
			t.Fatal(err)
		}
		id, ok := IdentityOf(fi)
		if !ok {
			t.Fatal("no identity for a regular file")
		}
		if err := os.Rename(filepath.Join(root, "sub"), filepath.Join(root, ".s")); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(outside, "deep"), "SECR")
		symlink(t, outside, filepath.Join(root, "sub"))
		if _, err := r.Open("sub/deep"); !errors.Is(err, ErrSymlink) {
			t.Fatalf("Open through the swapped directory = %v, want ErrSymlink", err)
		}
		if _, err := OpenDirFd(r.Fd(), "sub"); !errors.Is(err, ErrSymlink) {
			t.Fatalf("OpenDirFd of the swapped directory = %v, want ErrSymlink", err)
		}
		// The decoy outside has the size the scan saw: only the inode
		// tells it apart.
		f, err := os.Open(filepath.Join(outside, "deep"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		dfi, _ := f.Stat()
		if err := id.Check("sub/deep", dfi); !errors.Is(err, ErrChanged) {
			t.Fatalf("Check of a same-size decoy = %v, want ErrChanged", err)
		}
		if err := CheckFd(int(f.Fd()), "sub/deep", id); !errors.Is(err, ErrChanged) {
			t.Fatalf("CheckFd of a same-size decoy = %v, want ErrChanged", err)
		}
	})
}

func TestIdentityCheck(t *testing.T) {
	modes(t, func(t *testing.T) {
		root, _ := fixture(t)
		r := openRoot(t, root)
		stat := func(rel string) fs.FileInfo {
			t.Helper()
			fi, err := r.Lstat(rel)
			if err != nil {
				t.Fatal(err)
			}
			return fi
		}
		id, ok := IdentityOf(stat("file"))
		if !ok {
			t.Fatal("no identity for a regular file")
		}
		if _, ok := IdentityOf(stat("sub")); ok {
			t.Fatal("a directory has an identity")
		}
		if _, ok := IdentityOf(stat("abs-link")); ok {
			t.Fatal("a symlink has an identity")
		}
		for _, tc := range []struct {
			name   string
			change func()
			want   error
		}{
			{"unchanged", func() {}, nil},
			{"same inode, other size", func() { write(t, filepath.Join(root, "file"), "inside, longer") }, ErrChanged},
			{"same name, other inode", func() {
				tmp := filepath.Join(root, "file.new")
				write(t, tmp, "INSIDE") // the same size
				if err := os.Rename(tmp, filepath.Join(root, "file")); err != nil {
					t.Fatal(err)
				}
			}, ErrChanged},
			{"a directory now", func() {
				os.Remove(filepath.Join(root, "file"))
				os.Mkdir(filepath.Join(root, "file"), 0o755)
			}, ErrChanged},
			{"a FIFO now", func() {
				os.Remove(filepath.Join(root, "file"))
				if err := syscall.Mkfifo(filepath.Join(root, "file"), 0o644); err != nil {
					t.Skip("no FIFOs here:", err)
				}
			}, ErrChanged},
		} {
			t.Run(tc.name, func(t *testing.T) {
				os.RemoveAll(filepath.Join(root, "file"))
				write(t, filepath.Join(root, "file"), "inside")
				id, _ := IdentityOf(stat("file"))
				tc.change()
				var f *os.File
				var err error
				if f, err = r.Open("file"); err == nil {
					fi, serr := f.Stat()
					if serr != nil {
						t.Fatal(serr)
					}
					err = id.Check("file", fi)
					if cerr := CheckFd(int(f.Fd()), "file", id); !errors.Is(cerr, tc.want) && (cerr != nil || tc.want != nil) {
						t.Errorf("CheckFd = %v, want %v", cerr, tc.want)
					}
					f.Close()
				}
				if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("Check = %v, want %v", err, tc.want)
				}
			})
		}
		_ = id
	})
}

// TestOpenNonBlocking: a FIFO in a file's place is opened without
// blocking, and its fstat says what it is before anything is read.
func TestOpenNonBlocking(t *testing.T) {
	modes(t, func(t *testing.T) {
		root := t.TempDir()
		if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
			t.Skip("no FIFOs here:", err)
		}
		r := openRoot(t, root)
		f, err := r.Open("fifo")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := CheckFd(int(f.Fd()), "fifo", Identity{Dev: 1, Ino: 1}); !errors.Is(err, ErrChanged) {
			t.Fatalf("CheckFd of a FIFO = %v, want ErrChanged", err)
		}
	})
}

func TestCheckRel(t *testing.T) {
	for _, tc := range []struct {
		rel string
		ok  bool
	}{
		{"", true}, {"a", true}, {"a/b.c", true}, {"..a/b..", true}, {".well-known/x", true},
		{"/a", false}, {"..", false}, {"a/..", false}, {"a/../b", false}, {".", false},
		{"a/./b", false}, {"a//b", false}, {"a/", false}, {"a\x00b", false},
	} {
		t.Run(tc.rel, func(t *testing.T) {
			err := checkRel(tc.rel)
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrEscape) {
				t.Fatalf("checkRel(%q) = %v, want ok %v", tc.rel, err, tc.ok)
			}
		})
	}
}
