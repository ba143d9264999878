package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
)

func readTitle(r *http.Request) (string, *apiError) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return "", badRequest(10029, "invalid request: reading the body: "+err.Error())
	}
	var b struct {
		Title *string `json:"title"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return "", badRequest(10029, "invalid request: the body must be a JSON object with a title")
	}
	if b.Title == nil || strings.TrimSpace(*b.Title) == "" {
		return "", badRequest(10019, "missing title")
	}
	return *b.Title, nil
}

func titleTaken() *apiError {
	return badRequest(10014, "a namespace with this account ID and title already exists")
}

func handleListNamespaces(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	q := r.URL.Query()
	page, perPage := int64(1), int64(20)
	if q.Has("page") {
		n, ok := parseWhole(q.Get("page"))
		if !ok || n < 1 {
			writeError(w, badRequest(10007, "malformed page argument"))
			return
		}
		page = n
	}
	if q.Has("per_page") {
		n, ok := parseWhole(q.Get("per_page"))
		if !ok || n < 5 || n > 100 {
			writeError(w, badRequest(10008, "malformed per_page argument"))
			return
		}
		perPage = n
	}
	order := q.Get("order")
	if order != "" && order != "id" && order != "title" {
		writeError(w, badRequest(10043, "invalid order"))
		return
	}
	dir := q.Get("direction")
	if dir != "" && dir != "asc" && dir != "desc" {
		writeError(w, badRequest(10044, "invalid direction"))
		return
	}
	all := e.store.namespaces(rt.account)
	slices.SortFunc(all, func(a, b nsInfo) int {
		if order == "title" && a.Title != b.Title {
			return strings.Compare(a.Title, b.Title)
		}
		return strings.Compare(a.ID, b.ID)
	})
	if dir == "desc" {
		slices.Reverse(all)
	}
	from := min((page-1)*perPage, int64(len(all)))
	to := min(from+perPage, int64(len(all)))
	result := all[from:to]
	if result == nil {
		result = []nsInfo{}
	}
	writeJSON(w, http.StatusOK, envelope{Success: true, Result: result, ResultInfo: map[string]any{
		"count": len(result), "page": page, "per_page": perPage, "total_count": len(all),
	}})
}

func handleCreateNamespace(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	title, aerr := readTitle(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	var raw [16]byte
	rand.Read(raw[:])
	ref := nsRef{rt.account, hex.EncodeToString(raw[:])}
	s := e.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.titleTakenLocked(ref, title) {
		writeError(w, titleTaken())
		return
	}
	if err := s.applyLocked(ref, []mutation{{kind: recNSUpsert, title: title}}); err != nil {
		e.writeStoreError(w, err)
		return
	}
	writeOK(w, nsInfo{ID: ref.id, Title: title, SupportsURLEncoding: true})
}

func handleGetNamespace(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	info, ok := e.store.namespace(rt.ref())
	if !ok {
		writeError(w, namespaceNotFound())
		return
	}
	writeOK(w, info)
}

func handleRenameNamespace(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	title, aerr := readTitle(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	s := e.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns := s.nss[rt.ref()]; ns == nil || ns.deleted {
		writeError(w, namespaceNotFound())
		return
	}
	if s.titleTakenLocked(rt.ref(), title) {
		writeError(w, titleTaken())
		return
	}
	if err := s.applyLocked(rt.ref(), []mutation{{kind: recNSUpsert, title: title}}); err != nil {
		e.writeStoreError(w, err)
		return
	}
	writeOK(w, nil)
}

func handleDeleteNamespace(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	s := e.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns := s.nss[rt.ref()]; ns == nil || ns.deleted {
		writeError(w, namespaceNotFound())
		return
	}
	if err := s.applyLocked(rt.ref(), []mutation{{kind: recNSDelete}}); err != nil {
		e.writeStoreError(w, fmt.Errorf("deleting namespace %s: %w", rt.ns, err))
		return
	}
	writeOK(w, nil)
}
