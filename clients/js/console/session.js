// Who the operator is signed in as, and the bearer token the console sends for them:
// - an admin token (GATEWAY_ADMIN_TOKEN), kept only in this tab's sessionStorage;
// - or a Firebase account (email and password, through the Firebase JS SDK, against the Auth
//   emulator that /console/config.json names), whose ID token carries the `admin` claim. The
//   SDK keeps the user in sessionStorage too and refreshes the ID token before it expires;
//   token() asks it each time, so every request carries a current one.

import { initializeApp } from "firebase/app";
import {
  browserSessionPersistence,
  connectAuthEmulator,
  initializeAuth,
  signInWithEmailAndPassword,
  signOut,
} from "firebase/auth";

const TOKEN_KEY = "presence-console.admin-token";

export class Session {
  constructor() {
    this.kind = null; // "admin" | "firebase" | null
    this.adminToken = null;
    this.auth = null;
    this.firebaseError = null;
  }

  /**
   * Read /console/config.json and set up Firebase Auth; resume the tab's sign-in if any.
   * A missing or broken config leaves the admin token as the only way in, and says why.
   */
  async start() {
    try {
      const response = await fetch("/console/config.json", { cache: "no-store" });
      if (!response.ok) throw new Error(`config.json answered ${response.status}`);
      const config = await response.json();
      if (!config?.firebase?.projectId) throw new Error("config.json names no Firebase project");
      const app = initializeApp(
        {
          apiKey: config.firebase.apiKey || "console-key",
          authDomain: config.firebase.authDomain || `${config.firebase.projectId}.firebaseapp.com`,
          projectId: config.firebase.projectId,
        },
        "presence-console",
      );
      // No popup/redirect resolver: email and password need no iframe from the auth domain, so
      // the page loads nothing from outside this origin and the Auth emulator.
      this.auth = initializeAuth(app, { persistence: browserSessionPersistence });
      if (config.auth_emulator) {
        connectAuthEmulator(this.auth, config.auth_emulator, { disableWarnings: true });
      }
      await this.auth.authStateReady();
    } catch (error) {
      this.auth = null;
      this.firebaseError = `Firebase sign-in is unavailable: ${error.message}`;
    }
    const stored = sessionStorage.getItem(TOKEN_KEY);
    if (stored) {
      this.kind = "admin";
      this.adminToken = stored;
    } else if (this.auth?.currentUser) {
      this.kind = "firebase";
    }
  }

  get signedIn() {
    return this.kind !== null;
  }

  /** How the top bar names the operator. */
  get label() {
    if (this.kind === "admin") return "admin token";
    if (this.kind === "firebase") return this.auth.currentUser?.email ?? "Firebase user";
    return "";
  }

  useAdminToken(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    this.kind = "admin";
    this.adminToken = token;
  }

  async signInWithFirebase(email, password) {
    if (!this.auth) throw new Error(this.firebaseError ?? "Firebase sign-in is unavailable");
    await signInWithEmailAndPassword(this.auth, email, password);
    this.kind = "firebase";
  }

  /** The bearer token for the next request (null when signed out). */
  async token(forceRefresh = false) {
    if (this.kind === "admin") return this.adminToken;
    if (this.kind === "firebase" && this.auth.currentUser) {
      return this.auth.currentUser.getIdToken(forceRefresh);
    }
    return null;
  }

  refreshable() {
    return this.kind === "firebase";
  }

  /** Forget the operator: the stored admin token, the Firebase user. */
  async signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    const wasFirebase = this.kind === "firebase";
    this.kind = null;
    this.adminToken = null;
    if (wasFirebase && this.auth) await signOut(this.auth);
  }
}

/** Firebase Auth's error codes in words an operator can act on. */
export function firebaseMessage(error) {
  const code = error?.code ?? "";
  const words = {
    "auth/invalid-credential": "Wrong email or password.",
    "auth/wrong-password": "Wrong email or password.",
    "auth/user-not-found": "No account has this email.",
    "auth/invalid-email": "That is not an email address.",
    "auth/missing-password": "Enter the password.",
    "auth/too-many-requests": "Too many attempts: wait a moment and try again.",
    "auth/network-request-failed": "The Auth service could not be reached.",
  };
  return words[code] ?? error?.message ?? String(error);
}
