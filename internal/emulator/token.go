package emulator

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"unicode"
)

// TokenEnv is the environment variable the emulator's token is read from
// when neither --token nor --token-file is given. Unlike a flag, it is not
// shown to every user of the machine by ps.
const TokenEnv = "KVSYNC_EMULATOR_TOKEN"

// maxTokenFileBytes bounds a token file; a token is a few dozen bytes.
const maxTokenFileBytes = 4096

// ErrBadToken reports an unusable token source; the error names the source,
// never the token.
var ErrBadToken = errors.New("emulator token")

// TokenSources are where the emulator's token may come from, highest
// precedence first: Flag, then File, then the TokenEnv variable.
type TokenSources struct {
	// Flag is --token's value.
	Flag string
	// File is --token-file's value: a file holding the token.
	File string
	// Getenv reads the environment; nil reads none.
	Getenv func(string) string
	// Logger is warned when File is readable by group or others.
	Logger *slog.Logger
}

// ResolveToken returns the token to require, "" when none is configured
// (any credentials are accepted). --token and --token-file together are an
// error: one of them would silently lose.
func ResolveToken(s TokenSources) (string, error) {
	switch {
	case s.Flag != "" && s.File != "":
		return "", fmt.Errorf("%w: --token and --token-file are both set; use one", ErrBadToken)
	case s.Flag != "":
		return checkTokenChars(s.Flag, "--token")
	case s.File != "":
		return readTokenFile(s.File, s.Logger)
	case s.Getenv != nil:
		tok := s.Getenv(TokenEnv)
		if tok == "" {
			return "", nil
		}
		return checkTokenChars(tok, "$"+TokenEnv)
	}
	return "", nil
}

func readTokenFile(path string, logger *slog.Logger) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file", ErrBadToken, path)
	}
	if perm := info.Mode().Perm(); perm&0o044 != 0 && logger != nil {
		logger.Warn("emulator token file is readable by group or others; chmod 600 it", "file", path, "mode", fmt.Sprintf("%#o", perm))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("%w: reading %s: %w", ErrBadToken, path, err)
	}
	if len(data) > maxTokenFileBytes {
		return "", fmt.Errorf("%w: %s is over %d bytes", ErrBadToken, path, maxTokenFileBytes)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrBadToken, path)
	}
	return checkTokenChars(tok, path)
}

// checkTokenChars returns tok, or refuses a token no client could send in
// a header.
func checkTokenChars(tok, source string) (string, error) {
	if strings.IndexFunc(tok, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII }) >= 0 {
		return "", fmt.Errorf("%w: %s contains whitespace, control or non-ASCII characters", ErrBadToken, source)
	}
	return tok, nil
}
