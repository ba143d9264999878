package emulator

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// route is a parsed request path.
type route struct {
	op      string
	account string
	ns      string
	key     string
	handler func(e *Emulator, w http.ResponseWriter, r *http.Request, rt route)
}

func (rt route) ref() nsRef { return nsRef{rt.account, rt.ns} }

func noRoute(r *http.Request) *apiError {
	return &apiError{status: http.StatusNotFound, code: 7000, msg: "No route for that URI"}
}

// parseRoute maps the escaped path and method to an operation. Key names are
// decoded from the escaped path exactly once, so "%2F" is a slash inside the
// key and "%25" a literal percent sign.
func parseRoute(r *http.Request) (route, *apiError) {
	p := r.URL.EscapedPath()
	rest, ok := strings.CutPrefix(p, PathPrefix+"/")
	if !ok {
		return route{op: OpUnknown}, noRoute(r)
	}
	if rest == "user/tokens/verify" {
		return methods(r, route{}, map[string]routeOp{http.MethodGet: {OpTokenVerify, handleTokenVerify}})
	}
	acctSeg, rest, ok := strings.Cut(rest, "/")
	if !ok || acctSeg != "accounts" {
		return route{op: OpUnknown}, noRoute(r)
	}
	acct, rest, _ := strings.Cut(rest, "/")
	account, err := url.PathUnescape(acct)
	if err != nil || account == "" {
		return route{op: OpUnknown}, noRoute(r)
	}
	rt := route{account: account}
	if rest == "tokens/verify" {
		return checkIDs(methods(r, rt, map[string]routeOp{http.MethodGet: {OpTokenVerify, handleTokenVerify}}))
	}
	rest, ok = strings.CutPrefix(rest, "storage/kv/namespaces")
	if !ok {
		return route{op: OpUnknown}, noRoute(r)
	}
	if rest == "" {
		return checkIDs(methods(r, rt, map[string]routeOp{
			http.MethodGet:  {OpNamespaces, handleListNamespaces},
			http.MethodPost: {OpNamespaceCreate, handleCreateNamespace},
		}))
	}
	rest, ok = strings.CutPrefix(rest, "/")
	if !ok {
		return route{op: OpUnknown}, noRoute(r)
	}
	nsSeg, rest, hasRest := strings.Cut(rest, "/")
	ns, err := url.PathUnescape(nsSeg)
	if err != nil || ns == "" {
		return route{op: OpUnknown}, noRoute(r)
	}
	rt.ns = ns
	if !hasRest {
		return checkIDs(methods(r, rt, map[string]routeOp{
			http.MethodGet:    {OpNamespaceGet, handleGetNamespace},
			http.MethodPut:    {OpNamespaceRename, handleRenameNamespace},
			http.MethodDelete: {OpNamespaceDelete, handleDeleteNamespace},
		}))
	}
	switch rest {
	case "bulk":
		return checkIDs(methods(r, rt, map[string]routeOp{
			http.MethodPut:    {OpBulkPut, handleBulkPut},
			http.MethodDelete: {OpBulkDeleteDeprecated, handleBulkDelete},
		}))
	case "bulk/delete":
		return checkIDs(methods(r, rt, map[string]routeOp{http.MethodPost: {OpBulkDelete, handleBulkDelete}}))
	case "keys":
		return checkIDs(methods(r, rt, map[string]routeOp{http.MethodGet: {OpList, handleList}}))
	}
	kind, escKey, ok := strings.Cut(rest, "/")
	if !ok || (kind != "values" && kind != "metadata") {
		return route{op: OpUnknown}, noRoute(r)
	}
	key, err := url.PathUnescape(escKey)
	if err != nil {
		return route{op: OpUnknown}, badRequest(10042, "illegal key name: invalid percent-encoding")
	}
	rt.key = key
	var tbl map[string]routeOp
	if kind == "values" {
		tbl = map[string]routeOp{
			http.MethodGet:    {OpGet, handleGet},
			http.MethodPut:    {OpPut, handlePut},
			http.MethodDelete: {OpDelete, handleDelete},
		}
	} else {
		tbl = map[string]routeOp{http.MethodGet: {OpGetMetadata, handleGetMetadata}}
	}
	rt, aerr := checkIDs(methods(r, rt, tbl))
	if aerr == nil {
		if kerr := checkKey(rt.key); kerr != nil {
			return rt, kerr
		}
	}
	return rt, aerr
}

type routeOp struct {
	op      string
	handler func(e *Emulator, w http.ResponseWriter, r *http.Request, rt route)
}

func methods(r *http.Request, rt route, tbl map[string]routeOp) (route, *apiError) {
	ro, ok := tbl[r.Method]
	if !ok {
		rt.op = OpUnknown
		return rt, &apiError{status: http.StatusMethodNotAllowed, code: 7001, msg: "Method " + r.Method + " not allowed for this route"}
	}
	rt.op, rt.handler = ro.op, ro.handler
	return rt, nil
}

// checkIDs enforces the schema's maxLength of 32 on both identifiers.
func checkIDs(rt route, aerr *apiError) (route, *apiError) {
	if aerr != nil {
		return rt, aerr
	}
	if len(rt.account) > MaxIDLength {
		return rt, badRequest(7003, "Could not route to /accounts/"+rt.account+", perhaps your object identifier is invalid?")
	}
	if len(rt.ns) > MaxIDLength {
		return rt, badRequest(10011, "malformed namespace ID: "+rt.ns)
	}
	return rt, nil
}

// checkKey applies the documented key-name rules.
func checkKey(key string) *apiError {
	switch {
	case key == "" || key == "." || key == "..":
		return badRequest(10042, "illegal key name: "+strconv.Quote(key)+" is not allowed")
	case len(key) > MaxKeyBytes:
		return badRequest(10030, "key too long: key names may be at most 512 bytes")
	case !utf8.ValidString(key):
		// Key names travel in JSON (list results, bulk bodies), which
		// cannot carry such a name: it could be written but never listed.
		return badRequest(10042, "illegal key name: "+strconv.Quote(key)+" is not valid UTF-8")
	}
	return nil
}
