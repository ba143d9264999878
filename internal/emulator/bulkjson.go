package emulator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// The bulk endpoints used to decode their bodies with a json.Decoder, one
// Decode per element. That scans every value twice and dominated the
// emulator's CPU in the benchmark, so the bodies are now read whole and
// parsed by the strict single-pass parser below. Clients (and the
// conformance tests) see the emulator's verdicts and messages, so the parser
// reproduces exactly what the json.Decoder loop accepted, decoded and said:
// the scanner's syntax error texts, io.EOF / io.ErrUnexpectedEOF at the end
// of input, the Decoder's "expected comma after array element", and
// UnmarshalTypeError texts for the bulkPair struct it decoded into. The old
// decoder is kept in bulkjson_ref_test.go and FuzzBulkDecode checks that the
// two agree.

// maxJSONDepth is encoding/json's nesting limit; a bulk element counts as
// one level, as it did for the Decoder, which scanned each element alone.
const maxJSONDepth = 10000

// bulkItem is one decoded element of a bulk write body. The has* flags tell
// an absent (or null) field from a zero one, as the pointers of the old
// struct did.
type bulkItem struct {
	key      string
	value    []byte // owned copy of the decoded string
	meta     []byte // raw JSON of "metadata", aliasing the body; nil if absent
	exp, ttl float64
	base64   bool

	hasKey, hasValue, hasExp, hasTTL bool
}

// errNotKeyString is what a bulk delete element that is valid JSON but no
// string decodes to; the handler words every such failure the same way.
var errNotKeyString = errors.New("not a string")

// bulkTooLarge answers a bulk body over limit bytes.
func bulkTooLarge(what string, limit int64) *apiError {
	return tooLarge(fmt.Sprintf("request too large: a %s body must be at most %d bytes", what, limit))
}

// readBulkBody reads a bulk request body of at most limit bytes.
func readBulkBody(r *http.Request, limit int64, what string) ([]byte, *apiError) {
	// A declared length sizes the buffer (one spare byte, so that reading
	// up to EOF does not grow it); an absent or excessive one does not.
	size := int64(64 << 10)
	if r.ContentLength >= 0 && r.ContentLength <= limit {
		size = r.ContentLength + 1
	}
	buf := make([]byte, 0, size)
	lr := io.LimitReader(r.Body, limit+1)
	var err error
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		var n int
		n, err = lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break
		}
	}
	if int64(len(buf)) > limit {
		return nil, bulkTooLarge(what, limit)
	}
	if err != io.EOF {
		return nil, badRequest(10029, "invalid request: reading the body: "+err.Error())
	}
	return buf, nil
}

// decodeBulkArray walks the top-level JSON array of a bulk body, calling fn
// per element (fn decodes it with p.pair or p.key), and enforces the
// element count limit. Whatever follows the closing bracket is ignored, as
// the Decoder never looked at it.
func decodeBulkArray(data []byte, what string, fn func(i int, p *bulkParser) *apiError) *apiError {
	p := &bulkParser{data: data}
	p.skipSpace()
	if p.off >= len(data) || data[p.off] != '[' {
		return badRequest(10029, "invalid request: the "+what+" body must be a JSON array")
	}
	p.off++
	for i := 0; p.more(); i++ {
		if i >= MaxBulkPairs {
			return badRequest(10029, fmt.Sprintf("invalid request: a %s body holds at most %d items", what, MaxBulkPairs))
		}
		if aerr := fn(i, p); aerr != nil {
			return aerr
		}
	}
	if err := p.closeArray(); err != nil {
		return badRequest(10029, "invalid request: malformed JSON array: "+err.Error())
	}
	return nil
}

// bulkParser is a cursor over a bulk body positioned inside its top-level
// array.
type bulkParser struct {
	data      []byte
	off       int
	afterElem bool   // an element was read, so the next one needs a comma
	scratch   []byte // decoded strings that could not alias data
}

// isSpace is JSON's (and encoding/json's) whitespace.
func isSpace(c byte) bool {
	return c <= ' ' && (c == ' ' || c == '\t' || c == '\r' || c == '\n')
}

func (p *bulkParser) skipSpace() {
	for p.off < len(p.data) && isSpace(p.data[p.off]) {
		p.off++
	}
}

// more is Decoder.More: whether a non-space byte follows that does not
// close a container.
func (p *bulkParser) more() bool {
	p.skipSpace()
	return p.off < len(p.data) && p.data[p.off] != ']' && p.data[p.off] != '}'
}

// closeArray is the Decoder.Token call that ends the array once more said
// no: io.EOF, the closing bracket, or a misplaced '}'.
func (p *bulkParser) closeArray() error {
	p.skipSpace()
	if p.off >= len(p.data) {
		return io.EOF
	}
	switch c := p.data[p.off]; c {
	case ']':
		p.off++
		return nil
	case '}':
		if p.afterElem {
			return syntaxError(c, "after array element")
		}
		return syntaxError(c, "looking for beginning of value")
	default:
		return syntaxError(c, "after array element") // unreachable: more said no
	}
}

// beginElement consumes the comma before every element but the first and
// the whitespace before the value.
func (p *bulkParser) beginElement() error {
	if p.afterElem {
		if p.data[p.off] != ',' {
			return errors.New("expected comma after array element")
		}
		p.off++
	}
	p.afterElem = true
	p.skipSpace()
	if p.off >= len(p.data) {
		// Nothing but whitespace after the comma: the Decoder said EOF,
		// not unexpected EOF.
		return io.EOF
	}
	return nil
}

// syntaxError is the text of the json.SyntaxError the scanner reports.
func syntaxError(c byte, context string) error {
	return errors.New("invalid character " + quoteChar(c) + " " + context)
}

// quoteChar formats c as encoding/json's scanner does.
func quoteChar(c byte) string {
	if c == '\'' {
		return `'\''`
	}
	if c == '"' {
		return `'"'`
	}
	s := strconv.Quote(string(rune(c)))
	return "'" + s[1:len(s)-1] + "'"
}

// fieldTypeError is the text of the json.UnmarshalTypeError for a field of
// the bulkPair struct the Decoder filled.
func fieldTypeError(kind, field, typ string) error {
	return errors.New("json: cannot unmarshal " + kind + " into Go struct field bulkPair." + field + " of type " + typ)
}

// pair decodes one bulk write element into it.
func (p *bulkParser) pair(it *bulkItem) error {
	if err := p.beginElement(); err != nil {
		return err
	}
	*it = bulkItem{}
	if p.data[p.off] != '{' {
		kind, err := p.skipValue(0)
		if err != nil {
			return err
		}
		if kind == "null" {
			return nil // null into a struct leaves it untouched
		}
		return errors.New("json: cannot unmarshal " + kind + " into Go value of type emulator.bulkPair")
	}
	p.off++
	// A type error is kept but reported only once the whole element proved
	// well-formed: the Decoder scanned an element before unmarshalling it.
	var typeErr error
	p.skipSpace()
	if p.off >= len(p.data) {
		return io.ErrUnexpectedEOF
	}
	if p.data[p.off] == '}' {
		p.off++
		return nil
	}
	for {
		if err := p.keyStart(); err != nil {
			return err
		}
		name, err := p.decodeString()
		if err != nil {
			return err
		}
		field := matchField(name)
		if err := p.colon(); err != nil {
			return err
		}
		if p.off >= len(p.data) {
			return io.ErrUnexpectedEOF
		}
		ferr, err := p.field(it, field)
		if err != nil {
			return err
		}
		if typeErr == nil {
			typeErr = ferr
		}
		if closed, err := p.after('}', "after object key:value pair"); err != nil || closed {
			if err != nil {
				return err
			}
			return typeErr
		}
	}
}

// keyStart checks that an object key's string starts at p.off.
func (p *bulkParser) keyStart() error {
	if p.off >= len(p.data) {
		return io.ErrUnexpectedEOF
	}
	if c := p.data[p.off]; c != '"' {
		return syntaxError(c, "looking for beginning of object key string")
	}
	return nil
}

// colon consumes the ':' after an object key and the space around it.
func (p *bulkParser) colon() error {
	p.skipSpace()
	if p.off >= len(p.data) {
		return io.ErrUnexpectedEOF
	}
	if c := p.data[p.off]; c != ':' {
		return syntaxError(c, "after object key")
	}
	p.off++
	p.skipSpace()
	return nil
}

// after consumes what follows a member or element of a container that
// closer ends: a comma and the space after it, or closer (closed is then
// true); what names the place in a syntax error.
func (p *bulkParser) after(closer byte, what string) (closed bool, err error) {
	p.skipSpace()
	if p.off >= len(p.data) {
		return false, io.ErrUnexpectedEOF
	}
	switch c := p.data[p.off]; c {
	case ',':
		p.off++
		p.skipSpace()
		return false, nil
	case closer:
		p.off++
		return true, nil
	default:
		return false, syntaxError(c, what)
	}
}

// The bulkPair fields, in the order of the old struct.
const (
	fieldUnknown = iota
	fieldKey
	fieldValue
	fieldExpiration
	fieldTTL
	fieldMetadata
	fieldBase64
)

// matchField finds the field a member name sets the way encoding/json does:
// an exact match, else a case-insensitive one under its folding (in which,
// for example, "ſ" matches "s" and the Kelvin sign matches "k").
func matchField(name []byte) int {
	switch string(name) {
	case "key":
		return fieldKey
	case "value":
		return fieldValue
	case "expiration":
		return fieldExpiration
	case "expiration_ttl":
		return fieldTTL
	case "metadata":
		return fieldMetadata
	case "base64":
		return fieldBase64
	}
	if len(name) > 4*len("expiration_ttl") {
		return fieldUnknown // folding shrinks a name at most fourfold
	}
	var arr [64]byte
	switch string(foldName(arr[:0], name)) {
	case "KEY":
		return fieldKey
	case "VALUE":
		return fieldValue
	case "EXPIRATION":
		return fieldExpiration
	case "EXPIRATION_TTL":
		return fieldTTL
	case "METADATA":
		return fieldMetadata
	case "BASE64":
		return fieldBase64
	}
	return fieldUnknown
}

// foldName is encoding/json's appendFoldedName.
func foldName(out, in []byte) []byte {
	for i := 0; i < len(in); {
		if c := in[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(in[i:])
		out = utf8.AppendRune(out, unicode.ToUpper(unicode.ToLower(r)))
		i += n
	}
	return out
}

// field decodes the value of one member (p.off is at its first byte). err
// is a syntax error, which ends the element at once; typeErr a value of the
// wrong type, which the caller reports if the element proves well-formed.
func (p *bulkParser) field(it *bulkItem, field int) (typeErr, err error) {
	c := p.data[p.off]
	switch field {
	case fieldKey, fieldValue:
		switch c {
		case '"':
			s, err := p.decodeString()
			if err != nil {
				return nil, err
			}
			if field == fieldKey {
				it.key, it.hasKey = string(s), true
			} else {
				v := make([]byte, len(s))
				copy(v, s)
				it.value, it.hasValue = v, true
			}
			return nil, nil
		case 'n':
			if err := p.literal("null"); err != nil {
				return nil, err
			}
			if field == fieldKey {
				it.key, it.hasKey = "", false
			} else {
				it.value, it.hasValue = nil, false
			}
			return nil, nil
		}
		kind, err := p.skipValue(1)
		if err != nil {
			return nil, err
		}
		name := "key"
		if field == fieldValue {
			name = "value"
		}
		return fieldTypeError(kind, name, "string"), nil
	case fieldExpiration, fieldTTL:
		name := "expiration"
		if field == fieldTTL {
			name = "expiration_ttl"
		}
		switch {
		case c == '-' || '0' <= c && c <= '9':
			start := p.off
			if err := p.number(); err != nil {
				return nil, err
			}
			lit := p.data[start:p.off]
			f, perr := strconv.ParseFloat(string(lit), 64)
			if perr != nil {
				return fieldTypeError("number "+string(lit), name, "float64"), nil
			}
			if field == fieldTTL {
				it.ttl, it.hasTTL = f, true
			} else {
				it.exp, it.hasExp = f, true
			}
			return nil, nil
		case c == 'n':
			if err := p.literal("null"); err != nil {
				return nil, err
			}
			if field == fieldTTL {
				it.ttl, it.hasTTL = 0, false
			} else {
				it.exp, it.hasExp = 0, false
			}
			return nil, nil
		}
		kind, err := p.skipValue(1)
		if err != nil {
			return nil, err
		}
		return fieldTypeError(kind, name, "float64"), nil
	case fieldMetadata:
		// Any JSON is kept raw, null included, as json.RawMessage did.
		start := p.off
		if _, err := p.skipValue(1); err != nil {
			return nil, err
		}
		it.meta = p.data[start:p.off]
		return nil, nil
	case fieldBase64:
		switch c {
		case 't':
			if err := p.literal("true"); err != nil {
				return nil, err
			}
			it.base64 = true
			return nil, nil
		case 'f':
			if err := p.literal("false"); err != nil {
				return nil, err
			}
			it.base64 = false
			return nil, nil
		case 'n':
			// null into a bool leaves it as it was.
			return nil, p.literal("null")
		}
		kind, err := p.skipValue(1)
		if err != nil {
			return nil, err
		}
		return fieldTypeError(kind, "base64", "bool"), nil
	}
	_, err = p.skipValue(1)
	return nil, err
}

// key decodes one bulk delete element; any valid JSON other than a string
// (null included) is errNotKeyString.
func (p *bulkParser) key() (string, error) {
	if err := p.beginElement(); err != nil {
		return "", err
	}
	if p.data[p.off] == '"' {
		s, err := p.decodeString()
		if err != nil {
			return "", err
		}
		return string(s), nil
	}
	if _, err := p.skipValue(0); err != nil {
		return "", err
	}
	return "", errNotKeyString
}

// skipValue validates the value at p.off, inside depth open containers, and
// returns its kind as UnmarshalTypeError names it.
func (p *bulkParser) skipValue(depth int) (kind string, err error) {
	if p.off >= len(p.data) {
		return "", io.ErrUnexpectedEOF
	}
	switch c := p.data[p.off]; c {
	case '{', '[':
		if depth+1 > maxJSONDepth {
			return "", syntaxError(c, "exceeded max depth")
		}
		if c == '{' {
			return "object", p.skipObject(depth + 1)
		}
		return "array", p.skipArray(depth + 1)
	case '"':
		return "string", p.skipString()
	case 't':
		return "bool", p.literal("true")
	case 'f':
		return "bool", p.literal("false")
	case 'n':
		return "null", p.literal("null")
	default:
		if c == '-' || '0' <= c && c <= '9' {
			return "number", p.number()
		}
		return "", syntaxError(c, "looking for beginning of value")
	}
}

// skipObject validates an object whose '{' is at p.off.
func (p *bulkParser) skipObject(depth int) error {
	p.off++
	p.skipSpace()
	if p.off < len(p.data) && p.data[p.off] == '}' {
		p.off++
		return nil
	}
	for {
		if err := p.keyStart(); err != nil {
			return err
		}
		if err := p.skipString(); err != nil {
			return err
		}
		if err := p.colon(); err != nil {
			return err
		}
		if _, err := p.skipValue(depth); err != nil {
			return err
		}
		if closed, err := p.after('}', "after object key:value pair"); err != nil || closed {
			return err
		}
	}
}

// skipArray validates an array whose '[' is at p.off.
func (p *bulkParser) skipArray(depth int) error {
	p.off++
	p.skipSpace()
	if p.off < len(p.data) && p.data[p.off] == ']' {
		p.off++
		return nil
	}
	for {
		if _, err := p.skipValue(depth); err != nil {
			return err
		}
		if closed, err := p.after(']', "after array element"); err != nil || closed {
			return err
		}
	}
}

// literal consumes true, false or null, whose first byte is at p.off.
func (p *bulkParser) literal(word string) error {
	for j := 1; j < len(word); j++ {
		if p.off+j >= len(p.data) {
			return io.ErrUnexpectedEOF
		}
		if c := p.data[p.off+j]; c != word[j] {
			return syntaxError(c, "in literal "+word+" (expecting "+quoteChar(word[j])+")")
		}
	}
	p.off += len(word)
	return nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// number consumes a number, whose first byte ('-' or a digit) is at p.off.
// A number ends at the first byte that cannot continue it; what that byte
// may be is up to the caller.
func (p *bulkParser) number() error {
	d, i := p.data, p.off
	if d[i] == '-' {
		i++
		if i >= len(d) {
			return io.ErrUnexpectedEOF
		}
		if !isDigit(d[i]) {
			return syntaxError(d[i], "in numeric literal")
		}
	}
	if d[i] == '0' {
		i++
	} else {
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) {
			return io.ErrUnexpectedEOF
		}
		if !isDigit(d[i]) {
			return syntaxError(d[i], "after decimal point in numeric literal")
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) {
			return io.ErrUnexpectedEOF
		}
		if !isDigit(d[i]) {
			return syntaxError(d[i], "in exponent of numeric literal")
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	p.off = i
	return nil
}

// isPlain reports whether a string holds c as itself: printable ASCII other
// than the quote and the backslash.
func isPlain(c byte) bool {
	return 0x20 <= c && c < 0x80 && c != '"' && c != '\\'
}

// plainRun returns the index of the first byte at or after i that is not
// plain. It tests eight bytes at a time: the escape-free ASCII stretches of
// values are what a bulk body mostly consists of.
func plainRun(d []byte, i int) int {
	const (
		lo  = 0x0101010101010101
		hi  = 0x8080808080808080
		quo = lo * '"'
		bsl = lo * '\\'
	)
	for ; i+8 <= len(d); i += 8 {
		w := binary.LittleEndian.Uint64(d[i:])
		// A byte of t has its high bit set if that byte of w is below
		// 0x20, is '"' or '\\' (a zero byte after the XOR), or is >= 0x80.
		// The borrow of the subtractions may also flag a byte after a
		// flagged one, which is harmless: the loop below finds the first.
		t := ((w - lo*0x20) | ((w ^ quo) - lo) | ((w ^ bsl) - lo) | w) & hi
		if t != 0 {
			break
		}
	}
	for i < len(d) && isPlain(d[i]) {
		i++
	}
	return i
}

// skipString validates a string whose opening quote is at p.off.
func (p *bulkParser) skipString() error {
	d, i := p.data, p.off+1
	for {
		i = plainRun(d, i)
		if i >= len(d) {
			return io.ErrUnexpectedEOF
		}
		switch c := d[i]; {
		case c == '"':
			p.off = i + 1
			return nil
		case c == '\\':
			n, err := escapeLen(d, i)
			if err != nil {
				return err
			}
			i += n
		case c < 0x20:
			return syntaxError(c, "in string literal")
		default: // any byte >= 0x80 is valid here; decoding replaces bad UTF-8
			i++
		}
	}
}

// escapeLen validates the escape sequence whose backslash is at d[i] and
// returns its length.
func escapeLen(d []byte, i int) (int, error) {
	if i+1 >= len(d) {
		return 0, io.ErrUnexpectedEOF
	}
	switch c := d[i+1]; c {
	case 'b', 'f', 'n', 'r', 't', '\\', '/', '"':
		return 2, nil
	case 'u':
		for j := i + 2; j < i+6; j++ {
			if j >= len(d) {
				return 0, io.ErrUnexpectedEOF
			}
			if hexVal(d[j]) < 0 {
				return 0, syntaxError(d[j], `in \u hexadecimal character escape`)
			}
		}
		return 6, nil
	default:
		return 0, syntaxError(c, "in string escape code")
	}
}

func hexVal(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// getu4 is encoding/json's: the code unit of a \uXXXX at the start of s,
// or -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		v := hexVal(c)
		if v < 0 {
			return -1
		}
		r = r*16 + v
	}
	return r
}

// decodeString validates and decodes the string whose opening quote is at
// p.off, exactly as encoding/json's unquote does: escapes resolved, a valid
// surrogate pair combined, a lone surrogate and each byte of invalid UTF-8
// replaced by U+FFFD. The result aliases the body when the string needed no
// decoding, else p.scratch; either way it is valid only until the next call.
func (p *bulkParser) decodeString() ([]byte, error) {
	d := p.data
	start := p.off + 1
	i := plainRun(d, start)
	if i < len(d) && d[i] == '"' {
		p.off = i + 1
		return d[start:i], nil
	}
	buf := append(p.scratch[:0], d[start:i]...)
	for {
		if i >= len(d) {
			return nil, io.ErrUnexpectedEOF
		}
		switch c := d[i]; {
		case isPlain(c):
			j := plainRun(d, i+1)
			buf = append(buf, d[i:j]...)
			i = j
		case c == '"':
			p.off = i + 1
			p.scratch = buf
			return buf, nil
		case c == '\\':
			n, err := escapeLen(d, i)
			if err != nil {
				return nil, err
			}
			switch e := d[i+1]; e {
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r := getu4(d[i:])
				if utf16.IsSurrogate(r) {
					// The next escape is part of the pair only if it
					// completes it; otherwise it is decoded on its own.
					if dec := utf16.DecodeRune(r, getu4(d[i+6:])); dec != unicode.ReplacementChar {
						buf = utf8.AppendRune(buf, dec)
						i += 12
						continue
					}
					r = unicode.ReplacementChar
				}
				buf = utf8.AppendRune(buf, r)
			default: // '"', '\\', '/'
				buf = append(buf, e)
			}
			i += n
		case c < 0x20:
			return nil, syntaxError(c, "in string literal")
		default:
			r, size := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && size == 1 {
				buf = append(buf, "\uFFFD"...)
			} else {
				buf = append(buf, d[i:i+size]...)
			}
			i += size
		}
	}
}
