package uploader

// Abandon stops accepting work, as Drain does, but finishes nothing: a
// producer blocked on a full queue returns at once, and what is queued is
// dropped with the engine. It is for a writer that lost the right to
// write (a leader whose Lease ended): Run's context, cancelled after it,
// cancels the requests waiting or in flight, and the next writer's full
// sync covers whatever was queued here. It starts no worker, unlike Drain.
func (e *Engine) Abandon() {
	e.mu.Lock()
	e.closed = true
	e.broadcast()
	e.mu.Unlock()
}
