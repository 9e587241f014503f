package dns

import (
	"cmp"
	"encoding/hex"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/discovery"
)

// ServeDNS answers one query (miekg/dns Handler). Malformed messages never
// get here: miekg/dns answers FORMERR (or NOTIMP, or drops them) itself.
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	udp := false
	var client netip.Addr
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		udp = true
		client, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		client, _ = netip.AddrFromSlice(a.IP)
	}
	resp := s.Answer(req, client.Unmap(), udp)
	if resp == nil {
		return
	}
	s.metrics.answered(resp)
	_ = w.WriteMsg(resp)
}

// Answer builds the response to req from a client at client (its zone
// may come from dns.client_zones), to be sent over UDP (trimmed to the
// client's UDP size, TC set when records had to go) or TCP. nil: send
// nothing.
func (s *Server) Answer(req *mdns.Msg, client netip.Addr, udp bool) *mdns.Msg {
	resp := new(mdns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = false
	opt := req.IsEdns0()
	if len(req.Question) != 1 || req.Response {
		resp.SetRcode(req, mdns.RcodeFormatError)
		return finish(resp, opt, udp, s.set.UDPSize, nil)
	}
	if req.Opcode != mdns.OpcodeQuery {
		resp.SetRcode(req, mdns.RcodeNotImplemented)
		return finish(resp, opt, udp, s.set.UDPSize, nil)
	}
	if opt != nil && opt.Version() != 0 {
		resp.SetRcode(req, mdns.RcodeBadVers)
		return finish(resp, opt, udp, s.set.UDPSize, nil)
	}
	q := req.Question[0]
	qname := strings.ToLower(q.Name)
	resp.Question[0].Name = q.Name
	zone := s.zoneOf(qname)
	if zone == nil || (q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY) {
		resp.SetRcode(req, mdns.RcodeRefused)
		return finish(resp, opt, udp, s.set.UDPSize, nil)
	}
	resp.Authoritative = true
	if !s.ready.Load() {
		select {
		case <-s.synced:
			s.ready.Store(true)
		default:
			if time.Now().Before(s.deadline) {
				resp.SetRcode(req, mdns.RcodeServerFailure)
				return finish(resp, opt, udp, s.set.UDPSize, nil)
			}
			s.ready.Store(true)
		}
	}
	ecs := clientSubnet(opt)
	if ecs != nil {
		client, _ = netip.AddrFromSlice(ecs.Address)
		client = client.Unmap()
	}
	clientZone, scope := s.clientZone(client)
	if ecs != nil {
		ecs.SourceScope = uint8(scope)
	}
	a := answerer{s: s, zone: zone, qname: q.Name, lname: qname, qtype: q.Qtype, clientZone: clientZone, udp: udp}
	a.run(resp)
	return finish(resp, opt, udp, s.set.UDPSize, ecs)
}

// finish adds the OPT record when the client sent one, and trims a UDP
// answer to the size the client can take.
func finish(resp *mdns.Msg, opt *mdns.OPT, udp bool, ourMax uint16, ecs *mdns.EDNS0_SUBNET) *mdns.Msg {
	size := mdns.MinMsgSize
	if opt != nil {
		size = int(max(min(opt.UDPSize(), ourMax), mdns.MinMsgSize))
		o := &mdns.OPT{Hdr: mdns.RR_Header{Name: ".", Rrtype: mdns.TypeOPT}}
		o.SetUDPSize(ourMax)
		if resp.Rcode > 0xF {
			o.SetExtendedRcode(uint16(resp.Rcode))
		}
		if ecs != nil {
			o.Option = append(o.Option, ecs)
		}
		resp.Extra = append(resp.Extra, o)
	}
	if udp {
		answers, ns := len(resp.Answer), len(resp.Ns)
		resp.Truncate(size)
		// TC means the answer is incomplete; extra records that did not
		// fit do not make it so (RFC 2181 9).
		if len(resp.Answer) == answers && len(resp.Ns) == ns {
			resp.Truncated = false
		}
	} else {
		resp.Compress = true
	}
	return resp
}

func clientSubnet(opt *mdns.OPT) *mdns.EDNS0_SUBNET {
	if opt == nil {
		return nil
	}
	for _, o := range opt.Option {
		if e, ok := o.(*mdns.EDNS0_SUBNET); ok {
			c := *e
			return &c
		}
	}
	return nil
}

// clientZone is the zone of dns.client_zones that holds client, and the
// length of the prefix that decided it (the ECS scope).
func (s *Server) clientZone(client netip.Addr) (string, int) {
	if !client.IsValid() {
		return "", 0
	}
	for _, sz := range s.set.ClientZones {
		if sz.Prefix.Contains(client) {
			return sz.Zone, sz.Prefix.Bits()
		}
	}
	return "", 0
}

// zoneOf is the longest configured zone that holds qname (lower case).
func (s *Server) zoneOf(qname string) *Zone {
	for i := range s.set.Zones {
		if mdns.IsSubDomain(s.set.Zones[i].Name, qname) {
			return &s.set.Zones[i]
		}
	}
	return nil
}

// name returns the DNS name (lower-case FQDN) of a registry host in z, if
// the zone maps one to it.
func (z *Zone) name(host string) (string, bool) {
	var rel string
	switch {
	case z.Hosts == "":
		rel = host
	case strings.HasSuffix(host, "."+z.Hosts):
		rel = host[:len(host)-len(z.Hosts)-1]
	default:
		return "", false
	}
	if rel == "" {
		return "", false
	}
	return rel + "." + z.Name, true
}

// host returns the registry host of a relative name of z.
func (z *Zone) host(rel string) string {
	if z.Hosts == "" {
		return rel
	}
	return rel + "." + z.Hosts
}

// cutLabel splits the first label off a name.
func cutLabel(name string) (label, rest string, ok bool) {
	i := strings.IndexByte(name, '.')
	if i < 0 {
		return name, "", false
	}
	return name[:i], name[i+1:], true
}

// answerer is one query being answered.
type answerer struct {
	s          *Server
	zone       *Zone
	qname      string // as asked (answers echo its case)
	lname      string // lower case
	qtype      uint16
	clientZone string
	udp        bool
}

func (a *answerer) run(resp *mdns.Msg) {
	ttl := a.s.set.TTL
	rel := strings.TrimSuffix(strings.TrimSuffix(a.lname, a.zone.Name), ".")
	if rel == "" { // the apex
		if a.qtype == mdns.TypeSOA || a.qtype == mdns.TypeANY {
			resp.Answer = append(resp.Answer, a.soa())
			return
		}
		a.nodata(resp)
		return
	}
	labels := strings.Split(rel, ".")
	// <hex>.addr.<zone>
	if len(labels) == 2 && labels[1] == "addr" {
		ip, ok := decodeHexAddr(labels[0])
		if !ok {
			a.nxdomain(resp)
			return
		}
		if rr := addrRR(a.qname, ip, ttl); rr != nil && wantsType(a.qtype, rr.Header().Rrtype) {
			resp.Answer = append(resp.Answer, rr)
			return
		}
		a.nodata(resp)
		return
	}
	if len(labels) == 1 && labels[0] == "addr" {
		a.nodata(resp)
		return
	}
	// _<port>._tcp.<name>
	var port uint16
	if strings.HasPrefix(labels[0], "_") {
		if len(labels) < 3 || labels[1] != "_tcp" {
			if len(labels) >= 2 && labels[0] == "_tcp" && a.exists(strings.Join(labels[1:], ".")) {
				a.nodata(resp) // _tcp.<name>: an empty non-terminal
				return
			}
			a.nxdomain(resp)
			return
		}
		p, err := strconv.ParseUint(labels[0][1:], 10, 16)
		if err != nil || p == 0 {
			a.nxdomain(resp)
			return
		}
		port, labels = uint16(p), labels[2:]
	}
	host := a.zone.host(strings.Join(labels, "."))
	v := a.s.view(host, port, a.clientZone)
	if len(v.ports) == 0 {
		a.absent(resp, a.lname)
		return
	}
	if port != 0 {
		if len(v.byPort) == 0 {
			a.nxdomain(resp) // the host exists, not with this port
			return
		}
		if a.qtype != mdns.TypeSRV && a.qtype != mdns.TypeANY {
			a.nodata(resp) // _<port>._tcp names hold SRV records only
			return
		}
		a.qtype = mdns.TypeSRV // ANY
	}
	if a.zone.VirtualIPs {
		a.answerVIP(resp, host, v, port != 0)
		return
	}
	switch a.qtype {
	case mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY:
		resp.Answer = a.addresses(v)
	case mdns.TypeSRV:
		resp.Answer, resp.Extra = a.srv(v)
	}
	if len(resp.Answer) == 0 {
		a.nodata(resp)
	}
}

// exists reports whether a relative name of the zone is an existing name.
func (a *answerer) exists(rel string) bool {
	return a.s.current().has(rel + "." + a.zone.Name)
}

// absent answers for a name no host has: NODATA when it is an empty
// non-terminal (a longer name ends with it), else NXDOMAIN.
func (a *answerer) absent(resp *mdns.Msg, lname string) {
	if a.s.current().has(lname) {
		a.nodata(resp)
		return
	}
	a.nxdomain(resp)
}

func (a *answerer) nodata(resp *mdns.Msg) {
	resp.Answer, resp.Extra = nil, nil
	resp.Ns = append(resp.Ns, a.soa())
}

func (a *answerer) nxdomain(resp *mdns.Msg) {
	resp.Rcode = mdns.RcodeNameError
	resp.Ns = append(resp.Ns, a.soa())
}

// soa is the zone's SOA. Its serial is the time in seconds (replicas agree
// within a second; nothing transfers this zone); its minimum and TTL are
// negative_ttl, the time NXDOMAIN and NODATA are cached (RFC 2308).
func (a *answerer) soa() mdns.RR {
	neg := a.s.set.NegativeTTL
	return &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: a.zone.Name, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: neg},
		Ns:      "ns." + a.zone.Name,
		Mbox:    "hostmaster." + a.zone.Name,
		Serial:  uint32(time.Now().Unix()),
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  neg,
	}
}

// addresses is the A/AAAA answer: each served address once, the client's
// zone first, shuffled within, at most max_answers.
func (a *answerer) addresses(v *view) []mdns.RR {
	seen := map[netip.Addr]bool{}
	var local, other []netip.Addr
	for _, pv := range v.byPort {
		for _, e := range pv.served {
			ip := e.Addr.Addr().Unmap()
			if seen[ip] || !wantsAddr(a.qtype, ip) {
				continue
			}
			seen[ip] = true
			if a.clientZone != "" && e.Zone == a.clientZone {
				local = append(local, ip)
			} else {
				other = append(other, ip)
			}
		}
	}
	rand.Shuffle(len(local), func(i, j int) { local[i], local[j] = local[j], local[i] })
	rand.Shuffle(len(other), func(i, j int) { other[i], other[j] = other[j], other[i] })
	ips := append(local, other...)
	if m := a.s.set.MaxAnswers; m > 0 && len(ips) > m {
		ips = ips[:m]
	}
	out := make([]mdns.RR, 0, len(ips))
	for _, ip := range ips {
		out = append(out, addrRR(a.qname, ip, a.s.set.TTL))
	}
	return out
}

// srvRecord is an SRV answer before encoding.
type srvRecord struct {
	addr     netip.AddrPort
	priority uint16
	weight   uint32
	local    bool
}

// srv is the SRV answer for the endpoints of host's ports: what Get
// serves at priority 0, then the serving endpoints of later failover tiers
// and levels at 1, 2, …; targets <hex>.addr.<zone>, whose addresses go in
// the additional section.
func (a *answerer) srv(v *view) (answer, extra []mdns.RR) {
	var recs []srvRecord
	seen := map[netip.AddrPort]bool{}
	for _, pv := range v.byPort {
		for _, e := range pv.served {
			if !seen[e.Addr] {
				seen[e.Addr] = true
				recs = append(recs, srvRecord{addr: e.Addr, weight: e.EffectiveWeight(), local: a.clientZone != "" && e.Zone == a.clientZone})
			}
		}
		recs = append(recs, a.fallbacks(pv.auth, pv.all, seen)...)
	}
	// Zone-local first within a priority, shuffled within.
	rand.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	slices.SortStableFunc(recs, func(x, y srvRecord) int {
		if c := cmp.Compare(x.priority, y.priority); c != 0 {
			return c
		}
		if x.local != y.local {
			if x.local {
				return -1
			}
			return 1
		}
		return 0
	})
	if m := a.s.set.MaxAnswers; m > 0 && len(recs) > m {
		recs = recs[:m]
	}
	scale := uint32(1)
	for _, r := range recs {
		scale = max(scale, (r.weight+65534)/65535)
	}
	ttl := a.s.set.TTL
	extraSeen := map[netip.Addr]bool{}
	for _, r := range recs {
		ip := r.addr.Addr().Unmap()
		target := encodeHexAddr(ip) + ".addr." + a.zone.Name
		answer = append(answer, &mdns.SRV{
			Hdr:      mdns.RR_Header{Name: a.qname, Rrtype: mdns.TypeSRV, Class: mdns.ClassINET, Ttl: ttl},
			Priority: r.priority,
			Weight:   uint16(max(1, r.weight/scale)),
			Port:     r.addr.Port(),
			Target:   target,
		})
		if !extraSeen[ip] {
			extraSeen[ip] = true
			extra = append(extra, addrRR(target, ip, ttl))
		}
	}
	return answer, extra
}

// fallbacks are the serving endpoints of auth that Get does not serve now
// (later failover tiers, higher failover levels), ranked by tier then
// level into priorities 1, 2, …; seen gains their addresses.
func (a *answerer) fallbacks(auth discovery.Authority, all []*discovery.Endpoint, seen map[netip.AddrPort]bool) []srvRecord {
	rule, hasRule := a.s.fed.Rule(auth)
	tier := func(source string) int {
		if !hasRule {
			return 0
		}
		for i, t := range rule.Failover {
			if slices.Contains(t.Sources, source) {
				return i
			}
		}
		return len(rule.Failover)
	}
	type ranked struct {
		e     *discovery.Endpoint
		tier  int
		level uint64
	}
	var rest []ranked
	for _, e := range all {
		if seen[e.Addr] || !e.Health.Serving() {
			continue
		}
		lv, _ := strconv.ParseUint(e.Labels[discovery.PriorityLabel], 10, 32)
		rest = append(rest, ranked{e: e, tier: tier(e.Source), level: lv})
	}
	slices.SortStableFunc(rest, func(x, y ranked) int {
		if c := cmp.Compare(x.tier, y.tier); c != 0 {
			return c
		}
		return cmp.Compare(x.level, y.level)
	})
	var out []srvRecord
	prio := uint16(0)
	for i, r := range rest {
		if i == 0 || r.tier != rest[i-1].tier || r.level != rest[i-1].level {
			prio = min(prio+1, 65535)
		}
		if seen[r.e.Addr] {
			continue
		}
		seen[r.e.Addr] = true
		out = append(out, srvRecord{addr: r.e.Addr, priority: prio, weight: r.e.EffectiveWeight(), local: a.clientZone != "" && r.e.Zone == a.clientZone})
	}
	return out
}

// answerVIP answers a name of a zone with virtual IPs: its virtual IP for
// A/AAAA, and for SRV one record per port with the name as target. A host
// without a virtual IP (it collides with another, see package vip) is
// answered with its endpoints instead. One the index does not hold (the
// registry changed between the query's snapshot and the index) gets
// SERVFAIL, which resolvers do not cache for long.
func (a *answerer) answerVIP(resp *mdns.Msg, host string, v *view, onePort bool) {
	idx := a.s.current()
	h, _ := discovery.CanonicalHost(host)
	ip, ok := idx.vips.Lookup(h)
	if !ok {
		if !idx.knowsVIPHost(h) {
			resp.Rcode = mdns.RcodeServerFailure
			return
		}
		switch a.qtype { // a collision: the endpoints, as without virtual IPs
		case mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY:
			resp.Answer = a.addresses(v)
		case mdns.TypeSRV:
			resp.Answer, resp.Extra = a.srv(v)
		}
		if len(resp.Answer) == 0 {
			a.nodata(resp)
		}
		return
	}
	ttl := a.s.set.TTL
	rr := addrRR(a.qname, ip, ttl)
	switch {
	case wantsType(a.qtype, rr.Header().Rrtype) && !onePort:
		resp.Answer = append(resp.Answer, rr)
	case a.qtype == mdns.TypeSRV:
		target := a.qname
		for _, pv := range v.byPort {
			p := pv.auth.Port
			if p == 0 {
				continue // any port: no port to name
			}
			resp.Answer = append(resp.Answer, &mdns.SRV{
				Hdr:    mdns.RR_Header{Name: a.qname, Rrtype: mdns.TypeSRV, Class: mdns.ClassINET, Ttl: ttl},
				Weight: 1, Port: p, Target: target,
			})
		}
		if len(resp.Answer) > 0 {
			if onePort { // the target is the name without _port._tcp
				target = strings.SplitN(a.qname, ".", 3)[2]
				resp.Answer[0].(*mdns.SRV).Target = target
			}
			resp.Extra = append(resp.Extra, addrRR(target, ip, ttl))
		}
	}
	if len(resp.Answer) == 0 {
		a.nodata(resp)
	}
}

func wantsType(qtype, rrtype uint16) bool { return qtype == rrtype || qtype == mdns.TypeANY }

func wantsAddr(qtype uint16, ip netip.Addr) bool {
	switch qtype {
	case mdns.TypeA:
		return ip.Is4()
	case mdns.TypeAAAA:
		return ip.Is6()
	}
	return true
}

func addrRR(name string, ip netip.Addr, ttl uint32) mdns.RR {
	hdr := mdns.RR_Header{Name: name, Class: mdns.ClassINET, Ttl: ttl}
	if ip.Is4() {
		hdr.Rrtype = mdns.TypeA
		return &mdns.A{Hdr: hdr, A: ip.AsSlice()}
	}
	hdr.Rrtype = mdns.TypeAAAA
	return &mdns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()}
}

func encodeHexAddr(ip netip.Addr) string { return hex.EncodeToString(ip.AsSlice()) }

func decodeHexAddr(s string) (netip.Addr, bool) {
	if len(s) != 8 && len(s) != 32 {
		return netip.Addr{}, false
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(b)
	return ip, ok
}
