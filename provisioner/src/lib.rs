//! `ai-sandbox` provisioner library: configuration, rendering of the instance's files
//! (cloud-init, firewall, compose), planning, and the Linode API client. Rendering and
//! planning do no IO; only the Linode client and SSH modules touch the world.
