// vcsim for bigbang's tests: VMware's govmomi vCenter simulator (model VPX) with a named
// inventory (datacenter, clusters, datastores, port groups, templates), served over HTTPS on
// loopback with a certificate signed by a throwaway CA.
//
// Beside the simulator it plays what a real vCenter has and vcsim lacks:
//   - a guest: after PowerOnVM_Task the VM's tools report "running" and, on networks with
//     DHCP, the guest gets an address (networks listed in -no-dhcp never give one);
//   - control of faults, for tests: POST /bigbang/fail?method=M&vm=NAME&reason=TEXT makes the
//     next M on that VM return a task that ends in error (GenericVmConfigFault), and
//     POST /bigbang/delay?method=M&ms=N holds every M call for N ms (vCenter under load).
//
// Prints one JSON line (url, ca file, sha256 thumbprint) and runs until SIGTERM or stdin closes.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func list(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ---------------------------------------------------------------- certificates

func makeCerts(dir string) (tls.Certificate, string, string) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bigbang test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		log.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		log.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ioutil.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		log.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caFile, hex.EncodeToString(sum[:])
}

// ---------------------------------------------------------------- faults, delays, the guest

type control struct {
	mu       sync.Mutex
	fail     map[string]string // method + "/" + vm name -> reason (once)
	delay    map[string]time.Duration
	noDHCP   map[string]bool
	boot     time.Duration
	nextIP   int
	requests int
	log      []call
	cloning  map[string]*sync.Mutex // per template
}

// call is one SOAP request as the simulator saw it, for tests that check what bigbang sent.
type call struct {
	Method string  `json:"method"`
	Type   string  `json:"type"`
	This   string  `json:"this"`
	Name   string  `json:"name"` // the VM's name (for a snapshot: its VM's), when there is one
	Start  float64 `json:"start"`
	End    float64 `json:"end"`
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

var (
	methodRe = regexp.MustCompile(`Body>\s*<([A-Za-z_0-9]+)[\s>/]`)
	nameRe   = regexp.MustCompile(`<name(?:\s[^>]*)?>([^<]+)</name>`)
	thisRe   = regexp.MustCompile(`<_this[^>]*type="([A-Za-z]+)"[^>]*>([^<]+)</_this>`)
)

func entityName(typ, value string) (mo.Entity, string) {
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: typ, Value: value})
	if e, ok := obj.(mo.Entity); ok {
		return e, e.Entity().Name
	}
	return nil, ""
}

func (c *control) wrap(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/bigbang/") {
			c.serveControl(w, r)
			return
		}
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			inner.ServeHTTP(w, r)
			return
		}
		body, _ := ioutil.ReadAll(r.Body)
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		method, typ, this := "", "", ""
		if m := methodRe.FindSubmatch(body); m != nil {
			method = string(m[1])
		}
		if m := thisRe.FindSubmatch(body); m != nil {
			typ, this = string(m[1]), string(m[2])
		}
		name := ""
		if typ == "VirtualMachineSnapshot" {
			if snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: typ, Value: this}).(*simulator.VirtualMachineSnapshot); ok {
				_, name = entityName("VirtualMachine", snap.Vm.Value)
			}
		} else if typ != "" {
			_, name = entityName(typ, this)
		}
		started := time.Now()
		defer func() {
			c.mu.Lock()
			c.log = append(c.log, call{method, typ, this, name, seconds(started), seconds(time.Now())})
			c.mu.Unlock()
		}()
		c.mu.Lock()
		c.requests++
		d := c.delay[method]
		c.mu.Unlock()
		if d > 0 {
			time.Sleep(d)
		}
		if typ == "VirtualMachine" {
			if e, name := entityName(typ, this); e != nil {
				c.mu.Lock()
				reason, ok := c.fail[method+"/"+name]
				delete(c.fail, method+"/"+name)
				c.mu.Unlock()
				if ok {
					c.failedTask(w, e, method, reason)
					return
				}
			}
		}
		if method == "CloneVM_Task" {
			// vcsim 0.24 gives every clone the template's own device objects (and blanks the disks'
			// file names on each clone), so later clones and reconfigures change earlier clones'
			// disks and controllers. Real vCenter copies. One clone per template at a time, then copy.
			c.mu.Lock()
			lock, ok := c.cloning[this]
			if !ok {
				lock = new(sync.Mutex)
				c.cloning[this] = lock
			}
			c.mu.Unlock()
			lock.Lock()
			defer lock.Unlock()
			if m := nameRe.FindSubmatch(body); m != nil {
				defer detachDevices(string(m[1]))
			}
		}
		inner.ServeHTTP(w, r)
		if typ == "VirtualMachine" && (method == "PowerOnVM_Task" || method == "PowerOffVM_Task") {
			go c.guest(this, method == "PowerOnVM_Task")
		}
	})
}

func (c *control) failedTask(w http.ResponseWriter, e mo.Entity, method, reason string) {
	name := strings.TrimSuffix(method, "_Task")
	task := simulator.CreateTask(e, strings.ToLower(name[:1])+name[1:], func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, &types.GenericVmConfigFault{Reason: reason}
	})
	ref := task.Run()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" `+
		`xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">`+
		`<soapenv:Body><%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse></soapenv:Body></soapenv:Envelope>`,
		method, ref.Value, method)
}

// guest plays the VM's operating system: tools start after boot; DHCP answers where there is one.
func (c *control) guest(value string, on bool) {
	time.Sleep(c.boot)
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: value})
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn && on {
			return
		}
		if !on {
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
				{Name: "guest.guestState", Val: "notRunning"},
			})
			return
		}
		changes := []types.PropertyChange{
			{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
			{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
			{Name: "guest.guestState", Val: "running"},
		}
		dhcp := len(vm.Guest.Net) > 0
		for _, name := range nicNetworks(vm) {
			if c.noDHCP[name] {
				dhcp = false
			}
		}
		if vm.Guest.IpAddress == "" && dhcp {
			c.mu.Lock()
			c.nextIP++
			ip := fmt.Sprintf("10.99.%d.%d", c.nextIP/250, c.nextIP%250+2)
			c.mu.Unlock()
			vm.Guest.Net[0].IpAddress = []string{ip}
			changes = append(changes,
				types.PropertyChange{Name: "guest.ipAddress", Val: ip},
				types.PropertyChange{Name: "guest.net", Val: vm.Guest.Net})
		}
		simulator.Map.Update(vm, changes)
	})
}

// detachDevices gives the new clone device objects of its own (see the CloneVM_Task note).
func detachDevices(name string) {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok || vm.Name != name || vm.Config == nil || vm.Config.Template {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			for i, d := range vm.Config.Hardware.Device {
				vm.Config.Hardware.Device[i] = copyDevice(d)
			}
		})
	}
}

// copyDevice copies a device and the parts vcsim changes in place (backing, description, controller slots).
func copyDevice(d types.BaseVirtualDevice) types.BaseVirtualDevice {
	clone := func(x interface{}) interface{} {
		v := reflect.ValueOf(x)
		if v.Kind() != reflect.Ptr || v.IsNil() {
			return x
		}
		c := reflect.New(v.Elem().Type())
		c.Elem().Set(v.Elem())
		return c.Interface()
	}
	nd := clone(d).(types.BaseVirtualDevice)
	vd := nd.GetVirtualDevice()
	if vd.Backing != nil {
		vd.Backing = clone(vd.Backing).(types.BaseVirtualDeviceBackingInfo)
	}
	if vd.DeviceInfo != nil {
		vd.DeviceInfo = clone(vd.DeviceInfo).(types.BaseDescription)
	}
	if vd.Connectable != nil {
		vd.Connectable = clone(vd.Connectable).(*types.VirtualDeviceConnectInfo)
	}
	if c, ok := nd.(types.BaseVirtualController); ok {
		ctl := c.GetVirtualController()
		ctl.Device = append([]int32(nil), ctl.Device...)
	}
	return nd
}

// nicNetworks names the networks the VM's network cards are on.
func nicNetworks(vm *simulator.VirtualMachine) []string {
	var names []string
	for _, d := range vm.Config.Hardware.Device {
		card, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		switch b := card.GetVirtualEthernetCard().Backing.(type) {
		case *types.VirtualEthernetCardNetworkBackingInfo:
			names = append(names, b.DeviceName)
		case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
			ref := types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}
			if pg, ok := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup); ok {
				names = append(names, pg.Name)
			}
		}
	}
	return names
}

func (c *control) serveControl(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.URL.Path {
	case "/bigbang/fail":
		c.fail[q.Get("method")+"/"+q.Get("vm")] = q.Get("reason")
	case "/bigbang/delay":
		ms, _ := strconv.Atoi(q.Get("ms"))
		c.delay[q.Get("method")] = time.Duration(ms) * time.Millisecond
	case "/bigbang/requests":
		fmt.Fprintf(w, "%d\n", c.requests)
		return
	case "/bigbang/log":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.log)
		return
	case "/bigbang/reset":
		c.fail = map[string]string{}
		c.delay = map[string]time.Duration{}
		c.log = nil
	default:
		http.NotFound(w, r)
		return
	}
	fmt.Fprintln(w, "ok")
}

// ---------------------------------------------------------------- inventory

func renameSorted(kind, prefix string, names []string, rename func(mo.Entity, string)) {
	renameIn(kind, prefix, "", names, rename)
}

// dcOf is the name of the datacenter an entity is in ("" when none).
func dcOf(e mo.Entity) string {
	ref := e.Entity().Parent
	for ref != nil {
		obj := simulator.Map.Get(*ref)
		if obj == nil {
			return ""
		}
		if dc, ok := obj.(*simulator.Datacenter); ok {
			return dc.Name
		}
		ent, ok := obj.(mo.Entity)
		if !ok {
			return ""
		}
		ref = ent.Entity().Parent
	}
	return ""
}

// renameIn renames the entities of a kind whose name starts with prefix, in name order; only those in
// datacenter dc when dc is not "".
func renameIn(kind, prefix, dc string, names []string, rename func(mo.Entity, string)) {
	var found []mo.Entity
	for _, e := range simulator.Map.All(kind) {
		if strings.HasPrefix(e.Entity().Name, prefix) && (dc == "" || dcOf(e) == dc) {
			found = append(found, e)
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].Entity().Name < found[j].Entity().Name })
	for i, e := range found {
		if i < len(names) {
			e.Entity().Name = names[i]
			rename(e, names[i])
		}
	}
}

func makeTemplates(ctx context.Context, u *url.URL, dcName string, templates []string, datastore, network string) error {
	client, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		return err
	}
	defer client.Logout(ctx)
	finder := find.NewFinder(client.Client, false)
	dc, err := finder.Datacenter(ctx, dcName)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil {
		pools, err2 := finder.ResourcePoolList(ctx, "*")
		if err2 != nil || len(pools) == 0 {
			return err
		}
		pool = pools[0]
	}
	ds, err := finder.Datastore(ctx, datastore)
	if err != nil {
		return err
	}
	net, err := finder.Network(ctx, network)
	if err != nil {
		return err
	}
	backing, err := net.EthernetCardBackingInfo(ctx)
	if err != nil {
		return err
	}
	for _, t := range templates {
		parts := strings.SplitN(t, ":", 2)
		name, guest := parts[0], "otherGuest64"
		if len(parts) == 2 {
			guest = parts[1]
		}
		var devices object.VirtualDeviceList
		scsi, _ := devices.CreateSCSIController("lsilogic-sas")
		devices = append(devices, scsi)
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), "")
		disk.CapacityInKB = 40 * 1024 * 1024
		devices = append(devices, disk)
		nic, _ := devices.CreateEthernetCard("vmxnet3", backing)
		devices = append(devices, nic)
		changes, _ := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
		spec := types.VirtualMachineConfigSpec{
			Name: name, GuestId: guest, NumCPUs: 2, MemoryMB: 4096, DeviceChange: changes,
			Files: &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", datastore)},
		}
		task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
		if err != nil {
			return err
		}
		info, err := task.WaitForResult(ctx, nil)
		if err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		vm := object.NewVirtualMachine(client.Client, info.Result.(types.ManagedObjectReference))
		if err := vm.MarkAsTemplate(ctx); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	dir := flag.String("dir", "", "directory for ca.pem (required)")
	user := flag.String("user", "bigbang", "user name vcsim accepts")
	password := flag.String("password", "", "password vcsim accepts (required)")
	dcName := flag.String("datacenter", "DC-Holstebro", "datacenter names (comma-separated; each gets the same clusters, datastores and networks)")
	clusters := flag.String("clusters", "cl-prod-01,cl-prod-02,cl-lab-01", "cluster names")
	hosts := flag.Int("hosts", 2, "hosts per cluster")
	datastores := flag.String("datastores", "ds-ssd-01,ds-nl-01,ds-ssd-02", "datastore names (on every host)")
	networks := flag.String("networks", "vlan110-servers,vlan120-citrix,vlan999-isolated", "distributed port group names")
	noDHCP := flag.String("no-dhcp", "vlan999-isolated", "port groups without a DHCP server")
	templates := flag.String("templates", "tpl-win2022:windows2019srv_64Guest,tpl-rhel9:rhel8_64Guest", "templates [DATACENTER/]NAME:GUESTID (in the first datacenter unless named)")
	boot := flag.Duration("boot", 50*time.Millisecond, "time from power-on to guest tools running")
	esx := flag.Bool("esx", false, "a standalone ESXi host (API type HostAgent, datacenter ha-datacenter) instead of vCenter")
	flag.Parse()
	if *dir == "" || *password == "" {
		log.Fatal("-dir and -password are required")
	}
	log.SetOutput(ioutil.Discard) // vcsim logs every property update; keep stderr for real errors

	m := simulator.VPX()
	dcNames := list(*dcName)
	m.Datacenter = len(dcNames)
	m.Cluster = len(list(*clusters))
	m.ClusterHost = *hosts
	m.Host = 0
	m.Datastore = len(list(*datastores))
	m.Portgroup = len(list(*networks))
	if *esx {
		m = simulator.ESX()
		m.Datastore = len(list(*datastores))
		dcNames = []string{"ha-datacenter"}
		*networks = "VM Network"
		*noDHCP = ""
	}
	m.Machine = 0
	m.Pool = 0
	m.App = 0
	m.Pod = 0
	if err := m.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
	defer m.Remove()

	var generated []string
	if *esx {
		renameSorted("Datastore", "LocalDS_", list(*datastores), func(e mo.Entity, name string) {
			ds := e.(*simulator.Datastore)
			ds.Summary.Name = name
			ds.Info.GetDatastoreInfo().Name = name
		})
		dcNames = dcNames[:0]
	}
	for i := range dcNames {
		generated = append(generated, fmt.Sprintf("DC%d", i))
	}
	for i, dc := range dcNames {
		prefix := generated[i]
		renameSorted("ClusterComputeResource", prefix+"_C", list(*clusters), func(mo.Entity, string) {})
		renameSorted("DistributedVirtualPortgroup", prefix+"_DVPG", list(*networks), func(e mo.Entity, name string) {
			pg := e.(*simulator.DistributedVirtualPortgroup)
			pg.Name = name // mo.Network's own name field, which the "name" property reads
			pg.Config.Name = name
		})
		renameIn("Datastore", "LocalDS_", prefix, list(*datastores), func(e mo.Entity, name string) {
			ds := e.(*simulator.Datastore)
			ds.Summary.Name = name
			ds.Info.GetDatastoreInfo().Name = name
		})
		_ = dc
	}
	renameSorted("Datacenter", "DC", dcNames, func(mo.Entity, string) {})
	if *esx {
		dcNames = []string{"ha-datacenter"}
	}

	cert, caFile, thumb := makeCerts(*dir)
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	m.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *password)}
	ctl := &control{fail: map[string]string{}, delay: map[string]time.Duration{}, noDHCP: map[string]bool{}, boot: *boot,
		cloning: map[string]*sync.Mutex{}}
	for _, n := range list(*noDHCP) {
		ctl.noDHCP[n] = true
	}
	s := m.Service.NewServer()
	// Set before anyone knows the URL, so no request has been served by the bare handler.
	s.Server.Config.Handler = ctl.wrap(s.Server.Config.Handler)
	defer s.Close()

	perDC := map[string][]string{}
	for _, t := range list(*templates) {
		dc, name := dcNames[0], t
		if at := strings.Index(t, "/"); at >= 0 {
			dc, name = t[:at], t[at+1:]
		}
		perDC[dc] = append(perDC[dc], name)
	}
	for _, dc := range dcNames {
		if err := makeTemplates(context.Background(), s.URL, dc, perDC[dc], list(*datastores)[0], list(*networks)[0]); err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: templates:", err)
			os.Exit(1)
		}
	}
	ctl.requests = 0
	ctl.log = nil

	public := *s.URL
	public.User = nil
	out, _ := json.Marshal(map[string]string{"url": public.String(), "host": public.Hostname(), "port": public.Port(),
		"ca_file": caFile, "thumbprint": thumb})
	fmt.Println(string(out))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() { _, _ = io.Copy(ioutil.Discard, os.Stdin); stop <- syscall.SIGTERM }()
	<-stop
}
