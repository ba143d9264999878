package emulator

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
)

// cfMessage is an item of the envelope's errors or messages array.
type cfMessage struct {
	Code       int         `json:"code"`
	Message    string      `json:"message"`
	ErrorChain []cfMessage `json:"error_chain,omitempty"`
}

// envelope is Cloudflare's v4 response body.
type envelope struct {
	Success    bool        `json:"success"`
	Errors     []cfMessage `json:"errors"`
	Messages   []cfMessage `json:"messages"`
	Result     any         `json:"result"`
	ResultInfo any         `json:"result_info,omitempty"`
}

// apiError is a failure answered with Cloudflare's failure envelope.
type apiError struct {
	status int
	code   int
	msg    string
	chain  []cfMessage
	// retryAfter, when set, is sent as the Retry-After header.
	retryAfter string
	// unreadBody marks an answer given without reading the request's body:
	// the connection is closed after it, since net/http would otherwise
	// read up to 256 KiB of a body no one uses (and wait for a client that
	// sends it slowly) before answering.
	unreadBody bool
}

func (a *apiError) Error() string { return a.msg }

func badRequest(code int, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, msg: msg}
}

func writeJSON(w http.ResponseWriter, status int, env envelope) {
	if env.Errors == nil {
		env.Errors = []cfMessage{}
	}
	if env.Messages == nil {
		env.Messages = []cfMessage{}
	}
	// Without HTML escaping, so that metadata and key names come back in
	// the bytes they were written in: json.Marshal would turn "<", ">",
	// "&", U+2028 and U+2029 inside them into \u escapes the writer never
	// sent, and a reader comparing bytes would see a change that never
	// happened.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(env)
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if err != nil {
		// Results are built from validated JSON; failing here is a bug.
		status = http.StatusInternalServerError
		body = []byte(`{"success":false,"errors":[{"code":10001,"message":"internal error encoding the response"}],"messages":[],"result":null}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

func writeOK(w http.ResponseWriter, result any) {
	writeJSON(w, http.StatusOK, envelope{Success: true, Result: result})
}

func writeError(w http.ResponseWriter, a *apiError) {
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	if a.unreadBody {
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, a.status, envelope{Errors: []cfMessage{{Code: a.code, Message: a.msg, ErrorChain: a.chain}}})
}

// authenticate applies Options.Token to the request's credentials.
func (e *Emulator) authenticate(r *http.Request) *apiError {
	authz := r.Header.Get("Authorization")
	email, key := r.Header.Get("X-Auth-Email"), r.Header.Get("X-Auth-Key")
	invalid := func(code int, what string) *apiError {
		return &apiError{status: http.StatusBadRequest, code: 6003, msg: "Invalid request headers",
			chain: []cfMessage{{Code: code, Message: "Invalid format for " + what + " header"}}}
	}
	denied := &apiError{status: http.StatusForbidden, code: 10000, msg: "Authentication error"}
	if authz != "" {
		scheme, tok, ok := strings.Cut(strings.TrimSpace(authz), " ")
		tok = strings.TrimSpace(tok)
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return invalid(6111, "Authorization")
		}
		if !e.tokenMatches(tok) {
			return denied
		}
		return nil
	}
	if email != "" || key != "" {
		switch {
		case email == "":
			return invalid(6102, "X-Auth-Email")
		case key == "":
			return invalid(6103, "X-Auth-Key")
		case !e.tokenMatches(key):
			return denied
		}
		return nil
	}
	return &apiError{status: http.StatusBadRequest, code: 9106,
		msg: "Missing X-Auth-Key, X-Auth-Email or Authorization headers"}
}

// tokenMatches reports whether cred is the configured token; with none
// configured any credential matches. The comparison takes the same time
// wherever the first differing byte is, so a client cannot find the token
// byte by byte from response times; comparing SHA-256 digests also hides
// the token's length, which subtle.ConstantTimeCompare alone would leak.
func (e *Emulator) tokenMatches(cred string) bool {
	if e.token == "" {
		return true
	}
	got := sha256.Sum256([]byte(cred))
	return subtle.ConstantTimeCompare(got[:], e.tokenSum[:]) == 1
}
