package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"unicode"
)

// Credential sources, in the order ResolveCredentials tries them.
const (
	EnvAPIToken = "CLOUDFLARE_API_TOKEN"
	// CredentialName is the file systemd's LoadCredential= provides under
	// $CREDENTIALS_DIRECTORY.
	CredentialName = "cloudflare-api-token"
	// EnvCredentialsDirectory is where systemd puts a unit's credentials.
	EnvCredentialsDirectory = "CREDENTIALS_DIRECTORY"
	EnvEmail                = "CLOUDFLARE_EMAIL"
	EnvAPIKey               = "CLOUDFLARE_API_KEY"
)

// maxTokenFileBytes bounds what is read from a token file: tokens are about
// 40 characters, so anything this large is the wrong file.
const maxTokenFileBytes = 4096

var (
	// ErrNoCredentials: no credential source is configured.
	ErrNoCredentials = errors.New("no Cloudflare API credentials")
	// ErrBadCredentials: a configured credential source is unusable (an
	// empty or unreadable token file, an email without a key).
	ErrBadCredentials = errors.New("unusable Cloudflare API credentials")
)

// Credentials authenticate to the API: an API token (preferred), or a
// global API key with its account email.
//
// Every way of printing them (fmt verbs, %#v, slog, JSON) redacts the secrets and
// says where they came from instead. That cannot reach a Credentials held in
// an unexported field of another struct printed with %v: fmt cannot call
// methods there, so keep them in exported fields or out of printed structs.
type Credentials struct {
	Token  string
	Email  string
	APIKey string

	source string
}

// String says what kind of credentials these are and where they came from,
// never the secret: "api token (from $CLOUDFLARE_API_TOKEN)".
func (c Credentials) String() string {
	var s string
	switch {
	case c.Token != "":
		s = "api token"
	case c.APIKey != "":
		s = "global api key for " + c.Email
	default:
		s = "no credentials"
	}
	if c.source != "" {
		s += " (from " + c.source + ")"
	}
	return s
}

// GoString keeps %#v from printing the fields.
func (c Credentials) GoString() string { return "config.Credentials{" + c.String() + "}" }

// Format makes every fmt verb print String (or GoString for %#v); without it
// verbs such as %d or %x would print the fields.
func (c Credentials) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, c.GoString())
		return
	}
	io.WriteString(f, c.String())
}

// LogValue logs the kind and source of the credentials, never the secret.
func (c Credentials) LogValue() slog.Value {
	r := c.redacted()
	attrs := []slog.Attr{slog.String("kind", r.Kind), slog.String("source", r.Source)}
	if r.Email != "" {
		attrs = append(attrs, slog.String("email", r.Email))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON writes the redacted form. slog's JSON handler marshals a
// struct that merely contains Credentials this way, not through LogValue.
func (c Credentials) MarshalJSON() ([]byte, error) { return json.Marshal(c.redacted()) }

type redactedCredentials struct {
	Kind   string `json:"kind"`
	Source string `json:"source"`
	Email  string `json:"email,omitempty"`
}

func (c Credentials) redacted() redactedCredentials {
	r := redactedCredentials{Kind: "none", Source: c.source}
	switch {
	case c.Token != "":
		r.Kind = "api_token"
	case c.APIKey != "":
		r.Kind = "global_api_key"
		r.Email = c.Email
	}
	return r
}

// ResolveCredentials finds the API credentials, trying in order:
//
//  1. $CLOUDFLARE_API_TOKEN;
//  2. api.token_file;
//  3. $CREDENTIALS_DIRECTORY/cloudflare-api-token (systemd LoadCredential=);
//  4. $CLOUDFLARE_EMAIL with $CLOUDFLARE_API_KEY (both or neither).
//
// A token file is trimmed of surrounding whitespace; an empty one is an
// error, and one readable by group or others draws a warning. No error ever
// contains a secret. logger may be nil.
func ResolveCredentials(api API, getenv func(string) string, logger *slog.Logger) (Credentials, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	email, key := strings.TrimSpace(getenv(EnvEmail)), strings.TrimSpace(getenv(EnvAPIKey))

	if tok := strings.TrimSpace(getenv(EnvAPIToken)); tok != "" {
		if err := checkToken(tok); err != nil {
			return Credentials{}, fmt.Errorf("$%s: %w", EnvAPIToken, err)
		}
		c := Credentials{Token: tok, source: "$" + EnvAPIToken}
		if api.TokenFile != "" {
			logger.Warn("api.token_file is ignored: $"+EnvAPIToken+" is set and takes precedence", "file", api.TokenFile)
		}
		warnShadowedKey(logger, email, key, c)
		return c, nil
	}
	if api.TokenFile != "" {
		tok, err := readTokenFile(api.TokenFile, logger)
		if err != nil {
			return Credentials{}, fmt.Errorf("api.token_file: %w", err)
		}
		c := Credentials{Token: tok, source: "file " + api.TokenFile}
		warnShadowedKey(logger, email, key, c)
		return c, nil
	}
	if path := credentialPath(getenv); path != "" {
		if _, err := os.Stat(path); err == nil {
			tok, err := readTokenFile(path, logger)
			if err != nil {
				return Credentials{}, fmt.Errorf("systemd credential %s: %w", CredentialName, err)
			}
			c := Credentials{Token: tok, source: "systemd credential " + path}
			warnShadowedKey(logger, email, key, c)
			return c, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Credentials{}, fmt.Errorf("systemd credential: %w: %w", ErrBadCredentials, err)
		}
	}
	switch {
	case email != "" && key != "":
		return Credentials{Email: email, APIKey: key, source: "$" + EnvEmail + " and $" + EnvAPIKey}, nil
	case email != "":
		return Credentials{}, fmt.Errorf("%w: $%s is set but $%s is not; a global API key needs both (an API token in $%s is preferred)", ErrBadCredentials, EnvEmail, EnvAPIKey, EnvAPIToken)
	case key != "":
		return Credentials{}, fmt.Errorf("%w: $%s is set but $%s is not; a global API key needs both (an API token in $%s is preferred)", ErrBadCredentials, EnvAPIKey, EnvEmail, EnvAPIToken)
	}
	return Credentials{}, fmt.Errorf("%w: set $%s, or api.token_file in the config, or provide the token as systemd credential %s (LoadCredential=%s:/path, read from $CREDENTIALS_DIRECTORY), or set both $%s and $%s",
		ErrNoCredentials, EnvAPIToken, CredentialName, CredentialName, EnvEmail, EnvAPIKey)
}

// credentialPath is where systemd's LoadCredential= puts the token, "" when
// kvsync does not run with credentials.
func credentialPath(getenv func(string) string) string {
	dir := getenv(EnvCredentialsDirectory)
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, CredentialName)
}

// TokenFile is a file that holds, or is configured to hold, the API token.
type TokenFile struct {
	// Path is as configured; relative paths in a config file have already
	// been resolved against its directory.
	Path string
	// Field names it in errors: "api.token_file" or
	// "$CREDENTIALS_DIRECTORY/cloudflare-api-token".
	Field string
	// Source is where it was set; zero for the systemd credential, which
	// Field names in full.
	Source Source
}

// TokenFiles lists the files the API token is read from, or would be:
// api.token_file whenever it is set ($CLOUDFLARE_API_TOKEN shadows it only
// until that is unset), and the systemd credential when ResolveCredentials
// looks for it (neither of those set). The credential need not exist yet.
func (c *Config) TokenFiles(getenv func(string) string) []TokenFile {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if c.API.TokenFile != "" {
		src, _ := c.SourceOf("api.token_file")
		return []TokenFile{{Path: c.API.TokenFile, Field: "api.token_file", Source: src}}
	}
	if strings.TrimSpace(getenv(EnvAPIToken)) != "" {
		return nil
	}
	if path := credentialPath(getenv); path != "" {
		return []TokenFile{{Path: path, Field: "$" + EnvCredentialsDirectory + "/" + CredentialName}}
	}
	return nil
}

func warnShadowedKey(logger *slog.Logger, email, key string, c Credentials) {
	if email != "" || key != "" {
		logger.Warn("$"+EnvEmail+"/$"+EnvAPIKey+" are ignored: an API token is used", "credentials", c)
	}
}

// readTokenFile reads and checks a token file; errors name the file, never
// its content.
func readTokenFile(path string, logger *slog.Logger) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadCredentials, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadCredentials, err)
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file", ErrBadCredentials, path)
	}
	if perm := info.Mode().Perm(); perm&0o044 != 0 {
		logger.Warn("API token file is readable by group or others; chmod 600 it", "file", path, "mode", fmt.Sprintf("%#o", perm))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("%w: reading %s: %w", ErrBadCredentials, path, err)
	}
	if len(data) > maxTokenFileBytes {
		return "", fmt.Errorf("%w: %s is over %d bytes; an API token is about 40 characters", ErrBadCredentials, path, maxTokenFileBytes)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrBadCredentials, path)
	}
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return tok, nil
}

// checkToken rejects what cannot be a token and would otherwise fail later
// as a malformed header (or smuggle one).
func checkToken(tok string) error {
	if strings.IndexFunc(tok, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII }) >= 0 {
		return fmt.Errorf("%w: the token contains whitespace, control or non-ASCII characters (more than one line?)", ErrBadCredentials)
	}
	return nil
}
