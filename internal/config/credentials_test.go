package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	secretToken = "s3cr3t-T0KEN-value-0123456789"
	secretKey   = "gl0bal-API-KEY-9876543210"
)

func TestResolveCredentials(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeFile(t, filepath.Join(dir, "token"), []byte("  "+secretToken+"\n\n"), 0o600)
	emptyFile := writeFile(t, filepath.Join(dir, "empty"), []byte(" \n"), 0o600)
	twoLines := writeFile(t, filepath.Join(dir, "two-lines"), []byte(secretToken+"\n"+secretToken+"\n"), 0o600)
	big := writeFile(t, filepath.Join(dir, "big"), bytes.Repeat([]byte(secretToken), 200), 0o600)
	credDir := filepath.Join(dir, "creds")
	if err := os.Mkdir(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(credDir, CredentialName), []byte(secretToken+"\n"), 0o400)
	emptyCredDir := t.TempDir()

	cases := []struct {
		name      string
		api       API
		env       map[string]string
		wantToken string
		wantKey   string
		wantStr   string
		err       error
		errHas    []string
	}{
		{name: "env token", env: map[string]string{EnvAPIToken: secretToken}, wantToken: secretToken, wantStr: "api token (from $CLOUDFLARE_API_TOKEN)"},
		{name: "env token beats file", api: API{TokenFile: emptyFile}, env: map[string]string{EnvAPIToken: secretToken}, wantToken: secretToken, wantStr: "$CLOUDFLARE_API_TOKEN"},
		{name: "token file trimmed", api: API{TokenFile: tokenFile}, wantToken: secretToken, wantStr: "api token (from file " + tokenFile + ")"},
		{name: "token file beats systemd", api: API{TokenFile: tokenFile}, env: map[string]string{"CREDENTIALS_DIRECTORY": emptyCredDir}, wantToken: secretToken, wantStr: "file " + tokenFile},
		{name: "systemd credential", env: map[string]string{"CREDENTIALS_DIRECTORY": credDir, EnvEmail: "a@b.c"}, wantToken: secretToken,
			wantStr: "api token (from systemd credential " + filepath.Join(credDir, CredentialName) + ")"},
		{name: "systemd dir without the credential falls through", env: map[string]string{"CREDENTIALS_DIRECTORY": emptyCredDir, EnvEmail: "a@b.c", EnvAPIKey: secretKey},
			wantKey: secretKey, wantStr: "global api key for a@b.c (from $CLOUDFLARE_EMAIL and $CLOUDFLARE_API_KEY)"},
		{name: "email and key", env: map[string]string{EnvEmail: "a@b.c", EnvAPIKey: secretKey}, wantKey: secretKey, wantStr: "global api key for a@b.c"},
		{name: "email alone", env: map[string]string{EnvEmail: "a@b.c"}, err: ErrBadCredentials, errHas: []string{"$CLOUDFLARE_EMAIL is set but $CLOUDFLARE_API_KEY is not"}},
		{name: "key alone", env: map[string]string{EnvAPIKey: secretKey}, err: ErrBadCredentials, errHas: []string{"$CLOUDFLARE_API_KEY is set but $CLOUDFLARE_EMAIL is not"}},
		{name: "nothing", err: ErrNoCredentials, errHas: []string{"CLOUDFLARE_API_TOKEN", "api.token_file", "CREDENTIALS_DIRECTORY", "LoadCredential", "CLOUDFLARE_EMAIL", "CLOUDFLARE_API_KEY"}},
		{name: "empty token file", api: API{TokenFile: emptyFile}, err: ErrBadCredentials, errHas: []string{"api.token_file", emptyFile + " is empty"}},
		{name: "missing token file", api: API{TokenFile: filepath.Join(dir, "absent")}, err: os.ErrNotExist, errHas: []string{"api.token_file", filepath.Join(dir, "absent")}},
		{name: "token file is a directory", api: API{TokenFile: dir}, err: ErrBadCredentials, errHas: []string{dir + " is not a regular file"}},
		{name: "two tokens in file", api: API{TokenFile: twoLines}, err: ErrBadCredentials, errHas: []string{twoLines, "whitespace"}},
		{name: "huge token file", api: API{TokenFile: big}, err: ErrBadCredentials, errHas: []string{big, "over 4096 bytes"}},
		{name: "token env with space", env: map[string]string{EnvAPIToken: secretToken + " " + secretToken}, err: ErrBadCredentials, errHas: []string{"$CLOUDFLARE_API_TOKEN"}},
		{name: "empty systemd credential", env: map[string]string{"CREDENTIALS_DIRECTORY": dir}, err: ErrBadCredentials},
	}
	// The last case needs CREDENTIALS_DIRECTORY/cloudflare-api-token empty.
	writeFile(t, filepath.Join(dir, CredentialName), nil, 0o400)

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			c, err := ResolveCredentials(tc.api, envOf(tc.env), logger)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				for _, s := range tc.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				for _, secret := range []string{secretToken, secretKey} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error leaks a secret: %q", err)
					}
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if c.Token != tc.wantToken || c.APIKey != tc.wantKey {
				t.Errorf("token %q key %q, want %q %q", c.Token, c.APIKey, tc.wantToken, tc.wantKey)
			}
			if tc.wantStr != "" && !strings.Contains(c.String(), tc.wantStr) {
				t.Errorf("String() = %q, want %q", c.String(), tc.wantStr)
			}
			assertNoSecret(t, c, logs.String())
		})
	}
}

// assertNoSecret prints c every way a program might and checks that neither
// the token nor the key appears.
func assertNoSecret(t *testing.T, c Credentials, extra ...string) {
	t.Helper()
	var logs bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&logs, nil), slog.NewJSONHandler(&logs, nil)} {
		l := slog.New(h)
		l.Info("creds", "c", c, "p", &c, "any", slog.AnyValue(c))
		l.Info("nested", slog.Group("g", "c", c), "s", struct{ C Credentials }{c})
	}
	js, err := json.Marshal(map[string]any{"c": c, "p": &c, "s": struct{ C Credentials }{c}})
	if err != nil {
		t.Fatal(err)
	}
	outputs := append([]string{
		fmt.Sprintf("%v %+v %#v %s %q %x %X %d %10.3v", c, c, c, c, c, c, c, c, c),
		fmt.Sprintf("%v %+v %#v", &c, &c, &c),
		fmt.Sprintf("%v %+v %#v", []Credentials{c}, struct{ C Credentials }{c}, map[string]Credentials{"k": c}),
		fmt.Sprint(c), fmt.Sprintln(c),
		string(js),
		logs.String(),
	}, extra...)
	for _, out := range outputs {
		for _, secret := range []string{secretToken, secretKey} {
			if strings.Contains(out, secret) {
				t.Errorf("secret printed: %s", out)
			}
		}
	}
}

func TestCredentialsPrinting(t *testing.T) {
	c := Credentials{Token: secretToken, source: "$" + EnvAPIToken}
	if got := fmt.Sprintf("%#v", c); got != "config.Credentials{api token (from $CLOUDFLARE_API_TOKEN)}" {
		t.Errorf("%%#v = %q", got)
	}
	k := Credentials{Email: "a@b.c", APIKey: secretKey}
	if got := fmt.Sprintf("%v", k); got != "global api key for a@b.c" {
		t.Errorf("%%v = %q", got)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "creds", c)
	if !strings.Contains(buf.String(), `"creds":{"kind":"api_token","source":"$CLOUDFLARE_API_TOKEN"}`) {
		t.Errorf("slog = %s", buf.String())
	}
	assertNoSecret(t, c)
	assertNoSecret(t, k)
	assertNoSecret(t, Credentials{Token: secretToken, Email: "a@b.c", APIKey: secretKey})
}

func TestTokenFileModeWarning(t *testing.T) {
	cases := []struct {
		mode os.FileMode
		warn bool
	}{
		{0o600, false},
		{0o400, false},
		{0o640, true},
		{0o604, true},
		{0o644, true},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%#o", tc.mode), func(t *testing.T) {
			path := writeFile(t, filepath.Join(t.TempDir(), "token"), []byte(secretToken), tc.mode)
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			c, err := ResolveCredentials(API{TokenFile: path}, nil, logger)
			if err != nil {
				t.Fatalf("a readable token file is not an error: %v", err)
			}
			if c.Token != secretToken {
				t.Errorf("token not read")
			}
			out := logs.String()
			warned := strings.Contains(out, "level=WARN") && strings.Contains(out, "file="+path) &&
				strings.Contains(out, fmt.Sprintf("mode=%#o", tc.mode))
			if warned != tc.warn {
				t.Errorf("warned=%v, want %v; log: %s", warned, tc.warn, out)
			}
			if strings.Contains(out, secretToken) {
				t.Errorf("log leaks the token: %s", out)
			}
		})
	}
}

func TestShadowedSourcesAreLogged(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "token"), []byte("other-token"), 0o600)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	env := map[string]string{EnvAPIToken: secretToken, EnvEmail: "a@b.c", EnvAPIKey: secretKey}
	creds, err := ResolveCredentials(API{TokenFile: path}, envOf(env), logger)
	if err != nil {
		t.Fatal(err)
	}
	if creds.Token != secretToken || creds.Email != "" || creds.APIKey != "" {
		t.Errorf("loaded %v, want the token of $%s alone", creds, EnvAPIToken)
	}
	out := logs.String()
	if !strings.Contains(out, "api.token_file is ignored") || !strings.Contains(out, "are ignored: an API token is used") {
		t.Errorf("shadowed sources not logged: %s", out)
	}
	if strings.Contains(out, secretToken) || strings.Contains(out, secretKey) {
		t.Errorf("log leaks a secret: %s", out)
	}
}

// TestResolveCredentialsNilLogger: without a logger (so the warning about a
// token file readable by others has nowhere to go) and without an
// environment, the token file is still read.
func TestResolveCredentialsNilLogger(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "token"), []byte(secretToken+"\n"), 0o644)
	creds, err := ResolveCredentials(API{TokenFile: path}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if creds.Token != secretToken || creds.Email != "" || creds.APIKey != "" || creds.source != "file "+path {
		t.Errorf("loaded %v (token matches: %v), want the token of file %s", creds, creds.Token == secretToken, path)
	}
}

// TestTokenFiles: TokenFiles names the file ResolveCredentials reads the
// token from, with the field and line that set it, and api.token_file even
// while $CLOUDFLARE_API_TOKEN shadows it.
func TestTokenFiles(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeFile(t, filepath.Join(dir, "token"), []byte(secretToken), 0o600)
	credDir := filepath.Join(dir, "creds")
	if err := os.Mkdir(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	credFile := writeFile(t, filepath.Join(credDir, CredentialName), []byte(secretToken), 0o400)
	withFile, err := parseFile([]byte("api:\n  account_id: a\n  token_file: "+tokenFile+"\n"), "kvsync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	withoutFile, err := parseFile([]byte("api:\n  account_id: a\n"), "kvsync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		cfg     Config
		env     map[string]string
		want    []TokenFile
		readsIt string // ResolveCredentials' source, "" when it reads no file
	}{
		{"token_file", withFile, nil,
			[]TokenFile{{Path: tokenFile, Field: "api.token_file", Source: Source{File: "kvsync.yaml", Line: 3}}}, "file " + tokenFile},
		{"token_file shadowed by the environment", withFile, map[string]string{EnvAPIToken: secretToken},
			[]TokenFile{{Path: tokenFile, Field: "api.token_file", Source: Source{File: "kvsync.yaml", Line: 3}}}, ""},
		{"token_file beats the systemd credential", withFile, map[string]string{EnvCredentialsDirectory: credDir},
			[]TokenFile{{Path: tokenFile, Field: "api.token_file", Source: Source{File: "kvsync.yaml", Line: 3}}}, "file " + tokenFile},
		{"systemd credential", withoutFile, map[string]string{EnvCredentialsDirectory: credDir},
			[]TokenFile{{Path: credFile, Field: "$CREDENTIALS_DIRECTORY/" + CredentialName}}, "systemd credential " + credFile},
		{"systemd credential shadowed by the environment", withoutFile, map[string]string{EnvCredentialsDirectory: credDir, EnvAPIToken: secretToken}, nil, ""},
		{"no file", withoutFile, nil, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			got := tc.cfg.TokenFiles(getenv)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("TokenFiles = %+v, want %+v", got, tc.want)
			}
			creds, err := ResolveCredentials(tc.cfg.API, getenv, nil)
			if tc.readsIt != "" && (err != nil || creds.source != tc.readsIt) {
				t.Errorf("ResolveCredentials read %q (err %v), want %q", creds.source, err, tc.readsIt)
			}
		})
	}
}
